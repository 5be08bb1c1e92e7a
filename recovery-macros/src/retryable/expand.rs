//! The code `#[retryable]` writes: the function keeps its signature and runs
//! its body in a loop. Each attempt gets fresh by-value arguments (clones;
//! the original on the last attempt) and fresh reborrows of `&mut`
//! arguments, and runs the body in a closure (sync) or an `async` block
//! awaited at once, so `return` and `?` end just that attempt. No `Box`, no
//! allocation, no `FnMut`.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat, ReceiverKind, Type};

use super::args::RetryArgs;
use crate::errors::Errors;
use crate::function::{contains_impl_trait, respan, result_type};

/// Checks of the function itself, all reported together.
pub fn check(func: &ItemFn, errors: &mut Errors) {
    let sig = &func.sig;
    if let Some(c) = &sig.constness {
        errors.at(
            c.span(),
            "#[retryable] cannot go on a `const fn`: retrying sleeps and reads a clock, which \
             a const fn cannot do; remove `const`",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.at(v.span(), "#[retryable] cannot go on a variadic function");
    }
    match result_type(func, "retryable") {
        Ok(ty) if contains_impl_trait(ty) => errors.push(syn::Error::new_spanned(
            ty,
            "#[retryable] cannot repeat a body whose return type holds `impl Trait`: name the type \
             (or box it) in the `Result`",
        )),
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
    if let Some(receiver) = sig.receiver() {
        let by_value = match &receiver.kind {
            ReceiverKind::Reference(..) => false,
            ReceiverKind::Typed(_, ty) => !matches!(**ty, Type::Reference(_)),
            _ => true,
        };
        if by_value {
            errors.at(
                receiver.span(),
                "#[retryable] cannot retry a method that takes `self` by value: the first attempt \
                 consumes it. Take `&self` or `&mut self`, or clone `self` into a helper that \
                 takes it by reference",
            );
        }
    }
}

/// Writes the retrying function.
pub fn generate(args: &RetryArgs, mut func: ItemFn) -> TokenStream {
    let krate = match &args.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::recovery),
    };
    let p = quote!(#krate::__private);
    let policy = args.policy_tokens(&krate);
    let name = args
        .name
        .as_ref()
        .map_or_else(|| func.sig.ident.to_string(), |(n, _)| n.clone());
    let ret = match result_type(&func, "retryable") {
        Ok(ty) => ty.clone(),
        Err(e) => return e.to_compile_error(),
    };
    let classify = match &args.when {
        // Spanned at the classifier, so a wrong signature points there.
        Some(when) => respan(
            quote!(#p::IntoDecision::into_decision((#when)(&__recovery_error))),
            when.span(),
        ),
        None => quote!(#p::always_retry(&__recovery_error)),
    };
    // Spanned at the return type, so an error type without `Display` is
    // reported there.
    let error_text = respan(quote!(#p::error_text(&__recovery_error)), ret.span());

    let Arguments { slots, binds } = rebind_arguments(&mut func, &p);
    let last = if slots.is_empty() {
        quote!()
    } else {
        quote!(let __recovery_last = __recovery_retrier.is_last_attempt();)
    };

    let body = &func.block;
    // The error lives only inside the `Err` arm, so it is dropped before an
    // async sleep: a `!Send` error cannot make the future `!Send`.
    let block = if func.sig.asyncness.is_some() {
        quote! {{
            const __RECOVERY_POLICY: #p::RetryPolicy = #policy;
            let mut __recovery_retrier = #p::Retrier::new(&__RECOVERY_POLICY, #name);
            #(#slots)*
            loop {
                #last
                #(#binds)*
                let __recovery_result = #p::attempt_future::<#ret, _>(async #body).await;
                let __recovery_sleep = match __recovery_result {
                    #p::Ok(__recovery_value) => return #p::Ok(__recovery_value),
                    #p::Err(__recovery_error) => {
                        let __recovery_decision = #classify;
                        match __recovery_retrier.retry_async(#error_text, __recovery_decision) {
                            #p::Some(__recovery_sleep) => __recovery_sleep,
                            #p::None => return #p::Err(__recovery_error),
                        }
                    }
                };
                __recovery_sleep.await;
            }
        }}
    } else {
        quote! {{
            const __RECOVERY_POLICY: #p::RetryPolicy = #policy;
            let mut __recovery_retrier = #p::Retrier::new(&__RECOVERY_POLICY, #name);
            #(#slots)*
            loop {
                #last
                #(#binds)*
                match #p::attempt::<#ret, _>(|| #body) {
                    #p::Ok(__recovery_value) => return #p::Ok(__recovery_value),
                    #p::Err(__recovery_error) => {
                        let __recovery_decision = #classify;
                        if !__recovery_retrier.retry_blocking(#error_text, __recovery_decision) {
                            return #p::Err(__recovery_error);
                        }
                    }
                }
            }
        }}
    };
    func.block = Box::new(syn::parse2(block).expect("the generated block parses"));
    func.into_token_stream()
}

struct Arguments {
    /// `let mut __recovery_slotN = Some(__recovery_argN);` before the loop.
    slots: Vec<TokenStream>,
    /// Per attempt: the user's patterns bound to a clone or a reborrow.
    binds: Vec<TokenStream>,
}

/// Renames by-value and `&mut` parameters in the signature, and writes the
/// statements that bind the user's names again at each attempt.
fn rebind_arguments(func: &mut ItemFn, p: &TokenStream) -> Arguments {
    let mut slots = Vec::new();
    let mut binds = Vec::new();
    for (i, input) in func.sig.inputs.iter_mut().enumerate() {
        let FnArg::Typed(arg) = input else { continue };
        let hidden = format_ident!("__recovery_arg{}", i);
        let ty_span = arg.ty.span();
        match &*arg.ty {
            Type::Reference(r) if r.mutability.is_some() => {
                // Only a plain name can be reborrowed; other patterns stay.
                let Pat::Ident(pi) = &*arg.pat else { continue };
                if pi.by_ref.is_some() || pi.subpat.is_some() {
                    continue;
                }
                let (mutability, ident) = (&pi.mutability, &pi.ident);
                binds.push(quote!(let #mutability #ident = &mut *#hidden;));
            }
            // Shared references are `Copy`: the attempt just uses them.
            Type::Reference(_) => continue,
            _ => {
                let slot = format_ident!("__recovery_slot{}", i);
                let pat = &arg.pat;
                slots.push(quote!(let mut #slot = #p::Some(#hidden);));
                // Spanned at the type, so a missing `Clone` points there.
                binds.push(respan(
                    quote!(let #pat = #p::take_or_clone(&mut #slot, __recovery_last);),
                    ty_span,
                ));
            }
        }
        *arg.pat = Pat::Ident(syn::PatIdent {
            attrs: Vec::new(),
            by_ref: None,
            mutability: None,
            ident: hidden,
            subpat: None,
        });
    }
    Arguments { slots, binds }
}
