//! Attribute macros of the [`recovery`](https://docs.rs/recovery) crate.
//! Depend on `recovery` and use them from there: the expansions refer to its
//! private API, which this crate is versioned with.

mod duration;
mod errors;
mod function;
mod meta;
mod resumable_step;
mod retryable;
mod suggest;
mod value;

use proc_macro::TokenStream;

/// Retries a function when it returns `Err`. Documented in `recovery`.
#[proc_macro_attribute]
pub fn retryable(attr: TokenStream, item: TokenStream) -> TokenStream {
    retryable::expand(attr.into(), item.into()).into()
}

/// Makes a function a resumable step of a run. Documented in `recovery`.
#[proc_macro_attribute]
pub fn resumable_step(attr: TokenStream, item: TokenStream) -> TokenStream {
    resumable_step::expand(attr.into(), item.into()).into()
}
