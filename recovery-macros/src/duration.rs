//! Durations in attributes (`"200ms"`, `"1.5s"`), parsed at expansion time
//! so that nothing is parsed at run time.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::spanned::Spanned;
use syn::{Expr, Lit};

use crate::value::literal;

/// Reads `key = "..."` as a positive duration, or says what to write instead.
pub fn parse(key: &str, value: &Expr) -> syn::Result<(Duration, Span)> {
    let span = value.span();
    let example = format!("`{key} = \"200ms\"` (units: ns, us, ms, s, m, h)");
    let text = match literal(value) {
        Some(Lit::Str(s)) => s.value(),
        Some(Lit::Int(i)) => {
            return Err(syn::Error::new_spanned(
                value,
                format!(
                    "`{key}` needs a unit: write it as a string, e.g. `{key} = \"{}ms\"`",
                    i.base10_digits()
                ),
            ));
        }
        _ => {
            return Err(syn::Error::new_spanned(
                value,
                format!("`{key}` expects a duration string such as {example}"),
            ));
        }
    };
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(syn::Error::new_spanned(
            value,
            format!("`{key}` cannot be negative; write a positive duration such as {example}"),
        ));
    }
    let duration = humantime::parse_duration(trimmed).map_err(|e| {
        syn::Error::new_spanned(
            value,
            format!("`{key}` = {text:?} is not a duration ({e}); write e.g. {example}"),
        )
    })?;
    if duration.is_zero() {
        return Err(syn::Error::new_spanned(
            value,
            format!("`{key}` must be longer than zero, e.g. {example}"),
        ));
    }
    if duration.as_nanos() > u128::from(u64::MAX) {
        return Err(syn::Error::new_spanned(
            value,
            format!("`{key}` = {text:?} is too long: at most about 584 years"),
        ));
    }
    Ok((duration, span))
}

/// `core::time::Duration::from_nanos(N)` through the runtime's private path.
pub fn to_tokens(krate: &TokenStream, d: Duration) -> TokenStream {
    let nanos = d.as_nanos() as u64;
    quote!(#krate::__private::Duration::from_nanos(#nanos))
}

/// A short human form for messages: "1.5s", "200ms".
pub fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> syn::Result<Duration> {
        let expr: Expr = syn::parse_str(s)?;
        parse("base", &expr).map(|(d, _)| d)
    }

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_str("\"500us\"").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_str("\"200ms\"").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_str("\"1.5s\"").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_str("\"2m\"").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_str("\"1h\"").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn refuses_with_a_reason() {
        let msg = |s: &str| parse_str(s).unwrap_err().to_string();
        assert!(msg("\"0s\"").contains("longer than zero"));
        assert!(msg("\"-1s\"").contains("negative"));
        assert!(msg("\"soon\"").contains("is not a duration"));
        assert!(msg("200").contains("base = \"200ms\""));
        assert!(msg("1.5").contains("expects a duration string"));
    }
}
