//! `#[retryable]`: parse the keys, check the function, write the loop.

mod args;
mod expand;

pub use args::RetryArgs;
pub use expand::{StepHooks, check, generate_fn};

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::Parser;

use crate::errors::Errors;
use crate::meta::parse_list;

/// Reads the attribute's keys, reporting mistakes to `errors`.
pub fn parse_args(attr: TokenStream, errors: &mut Errors) -> RetryArgs {
    let raw = parse_list.parse2(attr).unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    RetryArgs::from_raw(raw, errors)
}

pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(attr, &mut errors);
    let func = match crate::function::parse(item.clone(), "retryable") {
        Ok(func) => Some(func),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    if let Some(func) = &func {
        check(func, &mut errors);
    }
    match func {
        Some(func) if errors.is_empty() => expand::generate(&args, func),
        // Emit the function as written, so that no follow-on errors pile up
        // and tools keep working, plus every error found.
        _ => {
            let errors = errors.to_compile_errors();
            quote!(#item #errors)
        }
    }
}
