//! `#[resumable_step("name", item = ..., key = ..., version = N, run = ..., verify = "...", crate = "...")]`.

use proc_macro2::Span;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Expr, Lit, LitStr, Token};

use crate::errors::Errors;
use crate::meta::{RawArg, admit_key, crate_path, parse_list};
use crate::value::{is_negative_literal, literal};

const KEYS: &[&str] = &["item", "key", "version", "run", "verify", "crate"];

/// How a done step's outputs are checked: `recovery::marker::Verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMode {
    Hash,
    SizeMtime,
}

pub struct StepArgs {
    pub name: Option<(String, Span)>,
    /// `item = expr`: the step is a family, one instance per item.
    pub item: Option<Expr>,
    pub key: Option<Expr>,
    pub version: u32,
    pub run: Option<Expr>,
    pub verify: VerifyMode,
    pub krate: Option<syn::Path>,
}

/// The name first, then `key = value` pairs.
fn parse_all(input: ParseStream) -> syn::Result<(LitStr, Vec<RawArg>)> {
    if !input.peek(LitStr) {
        return Err(input
            .error("expected the step's name first, as a string: #[resumable_step(\"clone\")]"));
    }
    let name: LitStr = input.parse()?;
    if input.is_empty() {
        return Ok((name, Vec::new()));
    }
    input
        .parse::<Token![,]>()
        .map_err(|e| syn::Error::new(e.span(), "expected `,` after the step's name"))?;
    Ok((name, parse_list(input)?))
}

impl StepArgs {
    /// The runtime's hidden module the expansion calls into:
    /// `::recovery::__private`, or the one under `crate = "..."`.
    pub fn private_path(&self) -> proc_macro2::TokenStream {
        match &self.krate {
            Some(path) => quote::quote!(#path::__private),
            None => quote::quote!(::recovery::__private),
        }
    }

    pub fn parse(attr: proc_macro2::TokenStream, errors: &mut Errors) -> StepArgs {
        let mut args = StepArgs {
            name: None,
            item: None,
            key: None,
            version: 1,
            run: None,
            verify: VerifyMode::Hash,
            krate: None,
        };
        let (name, raw) = match parse_all.parse2(attr) {
            Ok(parsed) => parsed,
            Err(e) => {
                errors.push(e);
                return args;
            }
        };
        match check_name(&name.value()) {
            Ok(()) => args.name = Some((name.value(), name.span())),
            Err(reason) => errors.at(
                name.span(),
                format!(
                    "invalid step name {:?}: {reason}; a step name becomes a file name, so use \
                     letters, digits, '_', '-' and '.', e.g. \"clone\" or \"stage-2\"",
                    name.value()
                ),
            ),
        }
        let mut seen: Vec<String> = Vec::new();
        for RawArg { key, value } in raw {
            let intro = "after the name, the keys are";
            let Some(k) = admit_key(&key, KEYS, "resumable_step", intro, &mut seen, errors) else {
                continue;
            };
            let Some(value) = value else {
                let example = match k.as_str() {
                    "item" => "`item = repo.name`",
                    "key" => "`key = (url, rev)`",
                    "version" => "`version = 2`",
                    "run" => "`run = self.run`",
                    "verify" => "`verify = \"size_mtime\"`",
                    _ => "`crate = \"::my_recovery\"`",
                };
                errors.at(key.span(), format!("`{k}` needs a value, e.g. {example}"));
                continue;
            };
            match k.as_str() {
                "item" => match item(value) {
                    Ok(v) => args.item = Some(v),
                    Err(e) => errors.push(e),
                },
                "key" => args.key = Some(value),
                "run" => args.run = Some(value),
                "version" => match version(&value) {
                    Ok(v) => args.version = v,
                    Err(e) => errors.push(e),
                },
                "verify" => match verify(&value) {
                    Ok(v) => args.verify = v,
                    Err(e) => errors.push(e),
                },
                _ => match crate_path(&value) {
                    Ok(p) => args.krate = Some(p),
                    Err(e) => errors.push(e),
                },
            }
        }
        args
    }
}

/// An item must tell calls apart: a literal names one item on every call.
fn item(value: Expr) -> syn::Result<Expr> {
    if literal(&value).is_some() {
        return Err(syn::Error::new_spanned(
            &value,
            "`item` names the same item on every call when it is a literal, so the family would \
             have one instance; give an expression of the function's arguments, e.g. \
             `item = repo.name` or `item = (owner, page)` (or drop `item` for a plain step)",
        ));
    }
    Ok(value)
}

fn version(value: &Expr) -> syn::Result<u32> {
    let message = "version expects a whole number (0 or more), e.g. `version = 2`; bump it to run the step again after its code changed";
    if is_negative_literal(value) {
        return Err(syn::Error::new_spanned(value, message));
    }
    match literal(value) {
        Some(Lit::Int(i)) => i
            .base10_parse()
            .map_err(|_| syn::Error::new(value.span(), message)),
        _ => Err(syn::Error::new_spanned(value, message)),
    }
}

fn verify(value: &Expr) -> syn::Result<VerifyMode> {
    let message = "verify expects \"hash\" (the default: every output is hashed again before \
                   the step resumes) or \"size_mtime\" (an output with its recorded size and \
                   modification time is trusted without reading it)";
    match literal(value) {
        Some(Lit::Str(s)) => match s.value().as_str() {
            "hash" => Ok(VerifyMode::Hash),
            "size_mtime" => Ok(VerifyMode::SizeMtime),
            other => {
                let hint = match other
                    .to_ascii_lowercase()
                    .replace(['-', ' ', '+'], "_")
                    .as_str()
                {
                    "size_mtime" | "mtime_size" | "mtime" | "size_and_mtime" => {
                        "; did you mean \"size_mtime\"?"
                    }
                    "blake3" | "hashed" | "full" | "content" => "; did you mean \"hash\"?",
                    _ => "",
                };
                Err(syn::Error::new(
                    s.span(),
                    format!("unknown verify mode {other:?}: {message}{hint}"),
                ))
            }
        },
        _ => {
            let quoted = match value {
                Expr::Path(p) => p
                    .path
                    .get_ident()
                    .map(|i| format!("; write it as a string: `verify = \"{i}\"`")),
                _ => None,
            };
            Err(syn::Error::new_spanned(
                value,
                format!("{message}{}", quoted.unwrap_or_default()),
            ))
        }
    }
}

/// The run-time rule of `recovery::check_step_name`, at compile time.
fn check_name(name: &str) -> Result<(), String> {
    recovery_rules::step_name_problem(name).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_runtime_rules() {
        assert!(check_name("clone").is_ok());
        assert!(check_name("a.b-c_1").is_ok());
        assert!(check_name("").unwrap_err().contains("empty"));
        assert!(check_name("..").unwrap_err().contains("directory"));
        assert!(check_name("a/b").unwrap_err().contains("separator"));
        assert!(check_name("a b").unwrap_err().contains("' '"));
    }
}
