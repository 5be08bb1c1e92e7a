//! The `key = value, bare_key` lists of our attributes, before any meaning
//! is given to them.

use proc_macro2::Ident;

use crate::errors::Errors;
use crate::suggest::did_you_mean;
use syn::ext::IdentExt;
use syn::parse::ParseStream;
use syn::{Expr, Token};

/// One `key` or `key = value`.
pub struct RawArg {
    pub key: Ident,
    pub value: Option<Expr>,
}

/// Parses a comma-separated list of `key` / `key = expr`; keywords such as
/// `crate` are accepted as keys.
pub fn parse_list(input: ParseStream) -> syn::Result<Vec<RawArg>> {
    let mut args = Vec::new();
    while !input.is_empty() {
        let key = Ident::parse_any(input).map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected `key = value` or a bare key, e.g. `max_attempts = 5`",
            )
        })?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse::<Expr>()?)
        } else {
            None
        };
        args.push(RawArg { key, value });
        if input.is_empty() {
            break;
        }
        input
            .parse::<Token![,]>()
            .map_err(|e| syn::Error::new(e.span(), "expected `,` between the attribute's keys"))?;
    }
    Ok(args)
}

/// Parses `crate = "path"` into a path.
pub fn crate_path(value: &Expr) -> syn::Result<syn::Path> {
    match crate::value::literal(value) {
        Some(syn::Lit::Str(s)) => s.parse::<syn::Path>().map_err(|_| {
            syn::Error::new(
                s.span(),
                format!(
                    "`crate` = {:?} is not a path; write e.g. `crate = \"::my_recovery\"`",
                    s.value()
                ),
            )
        }),
        _ => Err(syn::Error::new_spanned(
            value,
            "`crate` expects a path in a string, e.g. `crate = \"::my_recovery\"`",
        )),
    }
}

/// Admits `key` if it is one of `keys` and not seen before in this
/// attribute; otherwise reports it (with the closest known key) and
/// returns `None`. `keys_intro` introduces the list ("the keys are").
pub fn admit_key(
    key: &Ident,
    keys: &[&str],
    attribute: &str,
    keys_intro: &str,
    seen: &mut Vec<String>,
    errors: &mut Errors,
) -> Option<String> {
    let name = key.to_string();
    if !keys.contains(&name.as_str()) {
        errors.at(
            key.span(),
            format!(
                "unknown key `{name}` for #[{attribute}]{}; {keys_intro}: {}",
                did_you_mean(&name, keys),
                keys.join(", ")
            ),
        );
        return None;
    }
    if seen.contains(&name) {
        errors.at(
            key.span(),
            format!(
                "duplicate key `{name}`: it is already set earlier in this attribute; keep one"
            ),
        );
        return None;
    }
    seen.push(name.clone());
    Some(name)
}
