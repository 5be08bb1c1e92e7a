//! The keys of `#[retryable(...)]`: parsed one by one into `RetryArgs`, then
//! checked across keys (`max_delay >= base`, ...).

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::spanned::Spanned;
use syn::{Expr, Lit};

use crate::duration;
use crate::errors::Errors;
use crate::meta::{RawArg, admit_key, crate_path};
use crate::suggest::did_you_mean;
use crate::value::{is_negative_literal, literal};

pub const KEYS: &[&str] = &[
    "max_attempts",
    "base",
    "multiplier",
    "max_delay",
    "max_elapsed",
    "jitter",
    "when",
    "name",
    "budget",
    "crate",
];

const JITTERS: &[&str] = &["none", "full", "equal", "decorrelated"];

// The runtime's default, from the one place both read it.
use recovery_rules::DEFAULT_BASE;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum JitterKind {
    None,
    Full,
    Equal,
    Decorrelated,
}

#[derive(Default)]
pub struct RetryArgs {
    pub max_attempts: Option<(u32, Span)>,
    pub base: Option<(Duration, Span)>,
    pub multiplier: Option<(f64, Span)>,
    pub max_delay: Option<(Duration, Span)>,
    pub max_elapsed: Option<(Duration, Span)>,
    pub jitter: Option<(JitterKind, Span)>,
    pub when: Option<Expr>,
    pub name: Option<(String, Span)>,
    pub budget: Option<syn::Path>,
    pub krate: Option<syn::Path>,
}

impl RetryArgs {
    /// Reads every key, reporting each mistake to `errors`.
    pub fn from_raw(raw: Vec<RawArg>, errors: &mut Errors) -> Self {
        let mut args = RetryArgs::default();
        let mut seen: Vec<String> = Vec::new();
        for RawArg { key, value } in raw {
            let Some(name) = admit_key(&key, KEYS, "retryable", "the keys are", &mut seen, errors)
            else {
                continue;
            };
            if let Err(e) = args.set(&name, key.span(), value.as_ref()) {
                errors.push(e);
            }
        }
        args.validate(errors);
        args
    }

    fn set(&mut self, key: &str, key_span: Span, value: Option<&Expr>) -> syn::Result<()> {
        let Some(value) = value else {
            if key == "jitter" {
                self.jitter = Some((JitterKind::Full, key_span));
                return Ok(());
            }
            return Err(syn::Error::new(
                key_span,
                format!("`{key}` needs a value, e.g. {}", example(key)),
            ));
        };
        match key {
            "max_attempts" => self.max_attempts = Some(max_attempts(value)?),
            "base" => self.base = Some(duration::parse(key, value)?),
            "max_delay" => self.max_delay = Some(duration::parse(key, value)?),
            "max_elapsed" => self.max_elapsed = Some(duration::parse(key, value)?),
            "multiplier" => self.multiplier = Some(multiplier(value)?),
            "jitter" => self.jitter = Some(jitter(value)?),
            "when" => self.when = Some(when(value)?),
            "name" => self.name = Some(name(value)?),
            "budget" => self.budget = Some(budget(value)?),
            "crate" => self.krate = Some(crate_path(value)?),
            _ => unreachable!("keys are checked against KEYS first"),
        }
        Ok(())
    }

    /// Rules across keys.
    fn validate(&self, errors: &mut Errors) {
        let base = self.base.map_or(DEFAULT_BASE, |(d, _)| d);
        let base_text = match self.base {
            Some(_) => format!("base ({})", duration::show(base)),
            None => format!("the default base ({})", duration::show(base)),
        };
        if let Some((max_delay, span)) = self.max_delay
            && max_delay < base
        {
            errors.at(
                span,
                format!(
                    "max_delay ({}) is shorter than {base_text}, so no delay could reach base; \
                         raise `max_delay` or lower `base`",
                    duration::show(max_delay)
                ),
            );
        }
        if let Some((max_elapsed, span)) = self.max_elapsed
            && max_elapsed < base
        {
            errors.at(
                span,
                format!(
                    "max_elapsed ({}) is shorter than {base_text}, so no retry could ever fit; \
                         raise `max_elapsed` or lower `base`",
                    duration::show(max_elapsed)
                ),
            );
        }
    }

    /// The policy as a constant expression of the runtime's `const fn`s.
    pub fn policy_tokens(&self, krate: &TokenStream) -> TokenStream {
        let p = quote!(#krate::__private);
        let base = duration::to_tokens(krate, self.base.map_or(DEFAULT_BASE, |(d, _)| d));
        let mut backoff = quote!(#p::Backoff::new(#base));
        if let Some((m, _)) = self.multiplier {
            let m = proc_macro2::Literal::f64_suffixed(m);
            backoff = quote!(#backoff.multiplier(#m));
        }
        if let Some((d, _)) = self.max_delay {
            let d = duration::to_tokens(krate, d);
            backoff = quote!(#backoff.max_delay(#d));
        }
        if let Some((j, _)) = self.jitter {
            let variant = match j {
                JitterKind::None => quote!(None),
                JitterKind::Full => quote!(Full),
                JitterKind::Equal => quote!(Equal),
                JitterKind::Decorrelated => quote!(Decorrelated),
            };
            backoff = quote!(#backoff.jitter(#p::Jitter::#variant));
        }
        let mut policy = quote!(#p::RetryPolicy::new());
        if let Some((n, _)) = self.max_attempts {
            policy = quote!(#policy.max_attempts(#n));
        }
        policy = quote!(#policy.backoff(#backoff));
        if let Some((d, _)) = self.max_elapsed {
            let d = duration::to_tokens(krate, d);
            policy = quote!(#policy.max_elapsed(#d));
        }
        if let Some(budget) = &self.budget {
            policy = quote!(#policy.budget(&#budget));
        }
        policy
    }
}

fn example(key: &str) -> &'static str {
    match key {
        "max_attempts" => "`max_attempts = 5`",
        "base" => "`base = \"200ms\"`",
        "multiplier" => "`multiplier = 2`",
        "max_delay" => "`max_delay = \"10s\"`",
        "max_elapsed" => "`max_elapsed = \"1m\"`",
        "when" => "`when = MyError::is_transient`",
        "name" => "`name = \"fetch_index\"`",
        "budget" => "`budget = DOWNSTREAM_BUDGET`",
        "crate" => "`crate = \"::my_recovery\"`",
        _ => "`jitter = \"full\"`",
    }
}

fn max_attempts(value: &Expr) -> syn::Result<(u32, Span)> {
    let span = value.span();
    if is_negative_literal(value) {
        return Err(syn::Error::new_spanned(
            value,
            "max_attempts must be at least 1: it counts every call, the first included",
        ));
    }
    match literal(value) {
        Some(Lit::Int(i)) => {
            let n: u32 = i.base10_parse().map_err(|_| {
                syn::Error::new(
                    span,
                    format!(
                        "max_attempts = {} is too large: at most {}",
                        i.base10_digits(),
                        u32::MAX
                    ),
                )
            })?;
            if n == 0 {
                return Err(syn::Error::new(
                    span,
                    "max_attempts must be at least 1: it counts every call, the first included \
                     (write `max_attempts = 1` for no retries)",
                ));
            }
            Ok((n, span))
        }
        _ => Err(syn::Error::new_spanned(
            value,
            "max_attempts expects a whole number, e.g. `max_attempts = 5`",
        )),
    }
}

fn multiplier(value: &Expr) -> syn::Result<(f64, Span)> {
    let span = value.span();
    let below =
        "multiplier must be at least 1 (1 keeps every delay equal to base), e.g. `multiplier = 2`";
    if is_negative_literal(value) {
        return Err(syn::Error::new_spanned(value, below));
    }
    let m: f64 = match literal(value) {
        Some(Lit::Int(i)) => i.base10_parse()?,
        Some(Lit::Float(f)) => f.base10_parse()?,
        _ => {
            return Err(syn::Error::new_spanned(
                value,
                "multiplier expects a number, e.g. `multiplier = 2` or `multiplier = 1.5`",
            ));
        }
    };
    if !m.is_finite() {
        return Err(syn::Error::new_spanned(
            value,
            "multiplier must be a finite number, e.g. `multiplier = 2`",
        ));
    }
    if m < 1.0 {
        return Err(syn::Error::new_spanned(value, below));
    }
    Ok((m, span))
}

fn jitter(value: &Expr) -> syn::Result<(JitterKind, Span)> {
    let span = value.span();
    let kinds =
        "\"none\", \"full\", \"equal\" or \"decorrelated\" (a bare `jitter` means \"full\")";
    match literal(value) {
        Some(Lit::Str(s)) => match s.value().as_str() {
            "none" => Ok((JitterKind::None, span)),
            "full" => Ok((JitterKind::Full, span)),
            "equal" => Ok((JitterKind::Equal, span)),
            "decorrelated" => Ok((JitterKind::Decorrelated, span)),
            other => Err(syn::Error::new_spanned(
                value,
                format!(
                    "unknown jitter kind {other:?}{}; expected {kinds}",
                    did_you_mean(other, JITTERS)
                ),
            )),
        },
        _ => {
            let hint = match value {
                Expr::Path(p) => format!(
                    "; write the kind as a string: `jitter = \"{}\"`",
                    p.to_token_stream().to_string().to_lowercase()
                ),
                _ => String::new(),
            };
            Err(syn::Error::new_spanned(
                value,
                format!("jitter expects {kinds}{hint}"),
            ))
        }
    }
}

fn when(value: &Expr) -> syn::Result<Expr> {
    match value {
        Expr::Path(_) | Expr::Closure(_) => Ok(value.clone()),
        _ => {
            let hint = match literal(value) {
                Some(Lit::Str(s)) => {
                    format!("; write the path without quotes: `when = {}`", s.value())
                }
                _ => String::new(),
            };
            Err(syn::Error::new_spanned(
                value,
                format!(
                    "when expects the path of a classifier `fn(&E) -> bool` or `fn(&E) -> recovery::Decision`, \
                     e.g. `when = MyError::is_transient`{hint}"
                ),
            ))
        }
    }
}

fn budget(value: &Expr) -> syn::Result<syn::Path> {
    match value {
        Expr::Path(p) if p.qself.is_none() => Ok(p.path.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            "budget expects the path of a `static` recovery::RetryBudget, e.g. \
             `budget = DOWNSTREAM_BUDGET` with `static DOWNSTREAM_BUDGET: RetryBudget = RetryBudget::new(500);`",
        )),
    }
}

fn name(value: &Expr) -> syn::Result<(String, Span)> {
    let span = value.span();
    match literal(value) {
        Some(Lit::Str(s)) if !s.value().trim().is_empty() => Ok((s.value(), span)),
        Some(Lit::Str(_)) => Err(syn::Error::new_spanned(
            value,
            "name must not be empty, e.g. `name = \"fetch_index\"`",
        )),
        _ => Err(syn::Error::new_spanned(
            value,
            "name expects a string, e.g. `name = \"fetch_index\"`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse::Parser;

    fn parse(tokens: &str) -> (RetryArgs, Vec<String>) {
        let raw = crate::meta::parse_list.parse_str(tokens).unwrap();
        let mut errors = Errors::default();
        let args = RetryArgs::from_raw(raw, &mut errors);
        let messages = match syn::parse2::<syn::File>(errors.to_compile_errors()) {
            Ok(file) => file
                .items
                .iter()
                .map(|i| i.to_token_stream().to_string())
                .collect(),
            Err(_) => vec![],
        };
        (args, messages)
    }

    #[test]
    fn reads_every_key() {
        let (a, errs) = parse(
            r#"max_attempts = 8, base = "50ms", multiplier = 3, max_delay = "5s",
               max_elapsed = "30s", jitter = "equal", when = E::is_transient, name = "push",
               crate = "::r""#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(a.max_attempts.unwrap().0, 8);
        assert_eq!(a.base.unwrap().0, Duration::from_millis(50));
        assert_eq!(a.multiplier.unwrap().0, 3.0);
        assert_eq!(a.max_delay.unwrap().0, Duration::from_secs(5));
        assert_eq!(a.max_elapsed.unwrap().0, Duration::from_secs(30));
        assert!(a.jitter.unwrap().0 == JitterKind::Equal);
        assert!(a.when.is_some());
        assert_eq!(a.name.unwrap().0, "push");
        assert!(a.krate.is_some());
    }

    #[test]
    fn bare_jitter_means_full() {
        let (a, errs) = parse("jitter");
        assert!(errs.is_empty());
        assert!(a.jitter.unwrap().0 == JitterKind::Full);
    }

    #[test]
    fn reports_every_mistake_at_once() {
        let (_, errs) = parse(r#"max_attempt = 5, base = "0s", jitter = "ful", base = "1s""#);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("did you mean `max_attempts`"));
        assert!(errs[1].contains("longer than zero"));
        assert!(errs[2].contains("did you mean `full`"));
        assert!(errs[3].contains("duplicate key `base`"));
    }

    #[test]
    fn cross_key_rules_use_the_default_base() {
        let (_, errs) = parse(r#"max_delay = "50ms""#);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("the default base (100ms)"));
    }
}
