//! The code `#[retryable]` writes: the function keeps its signature and runs
//! its body in a loop. Each attempt gets fresh by-value arguments (clones;
//! the original on the last attempt) and fresh reborrows of `&mut`
//! arguments, and runs the body in a closure (sync) or an async closure
//! (async), so `return` and `?` end just that attempt. No `Box`, no
//! allocation until an attempt fails.

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
    if let Some(attr) = func.attrs.iter().find(|a| {
        a.path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "resumable_step")
    }) {
        errors.push(syn::Error::new_spanned(
            attr,
            "put #[resumable_step] above #[retryable]: the step's resume check must run once, \
             outside the retry loop, not once per attempt",
        ));
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
pub fn generate(args: &RetryArgs, func: ItemFn) -> TokenStream {
    match generate_fn(args, func, None) {
        Ok(func) => func.into_token_stream(),
        Err(e) => e.to_compile_error(),
    }
}

/// What a step adds to the retry loop it holds (`#[resumable_step]` over
/// `#[retryable]`): statements run before every attempt after the first,
/// and before giving up. They see `__recovery_retrier`.
pub struct StepHooks {
    /// Discards what the failed attempt staged (may `return` an error).
    pub before_retry: TokenStream,
    /// Tells the step how many attempts were made and how long they slept.
    pub on_give_up: TokenStream,
    /// Rebinds what the hooks use so an async fn's loop of later attempts
    /// (an `async move` block) takes it by reference.
    pub captures: TokenStream,
}

/// The retrying function as a syntax tree (`#[resumable_step]` wraps its
/// body once more, and passes its hooks).
pub fn generate_fn(
    args: &RetryArgs,
    mut func: ItemFn,
    hooks: Option<&StepHooks>,
) -> syn::Result<ItemFn> {
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
    let ret = result_type(&func, "retryable")?.clone();
    let classify = match &args.when {
        // Spanned at the classifier, so a wrong signature points there.
        Some(when) => respan(
            quote!(#p::IntoDecision::into_decision((#when)(&__recovery_error))),
            when.span(),
        ),
        None => quote!(#p::always_retry(&__recovery_error)),
    };
    // Any error type: its text comes from Display, else Debug, else its
    // type's name.
    let error_text = quote! {
        let __recovery_text = {
            #[allow(unused_imports)]
            use #p::{ViaDebug as _, ViaDisplay as _, ViaName as _};
            (&&&#p::ErrorText(&__recovery_error)).__recovery_error_text()
        };
    };

    let Arguments { slots, binds } = rebind_arguments(&mut func, &p);
    let last = if slots.is_empty() {
        quote!()
    } else {
        quote!(let __recovery_last = __recovery_retrier.is_last_attempt(&__RECOVERY_POLICY);)
    };

    // The start of the call is kept only when there is a deadline to keep.
    let (start, started) = if args.max_elapsed.is_some() {
        (
            quote!(let __recovery_started = #p::RetryState::start(&__RECOVERY_POLICY);),
            quote!(__recovery_started),
        )
    } else {
        (quote!(), quote!(#p::None))
    };
    let body = &func.block;
    let prologue = quote! {
        const __RECOVERY_POLICY: #p::RetryPolicy = #policy;
        // The policy is passed at each call rather than kept in the state,
        // so what it does not use folds away even inside an async fn's
        // future (whose fields are read back from memory after each await).
        #start
        let mut __recovery_retrier: #p::RetryState = #p::Default::default();
        #(#slots)*
    };
    let (before_retry, before_each_retry, on_give_up, captures) = match hooks {
        Some(h) => {
            let before = &h.before_retry;
            (
                quote!(if __recovery_retrier.failed_attempts() > 0 { #before }),
                before.clone(),
                h.on_give_up.clone(),
                h.captures.clone(),
            )
        }
        None => (quote!(), quote!(), quote!(), quote!()),
    };
    let attempt_args = quote!(#before_retry #last #(#binds)*);
    let block = if func.sig.asyncness.is_some() {
        // The first attempt runs with nothing else held across its await:
        // the retry state and the sleep are made out of line once it has
        // failed, and the loop of later attempts is a second future, made
        // only then. Holding them from the start made a call that succeeds
        // at once about 4 ns slower. The body is written once, as an async
        // closure that owns the arguments and lends each attempt fresh
        // clones and reborrows. The error never enters that second future
        // and is dropped before any sleep: a `!Send` error cannot make the
        // future `!Send` (results are matched as moved-out temporaries, as
        // a local only moved out of by patterns counts as held across
        // later awaits).
        let decide = quote! {
            #p::cold_path(|| {
                let __recovery_decision = #classify;
                #error_text
                __recovery_retrier.retry_async((&__RECOVERY_POLICY, #name, #started), &__recovery_text, __recovery_decision)
            })
        };
        quote! {{
            const __RECOVERY_POLICY: #p::RetryPolicy = #policy;
            #start
            #(#slots)*
            #[allow(unused_mut)]
            let mut __recovery_body = async move |__recovery_last: bool| -> #ret {
                #(#binds)*
                #body
            };
            let (mut __recovery_retrier, __recovery_sleep) =
                match { __recovery_body(#p::RetryState::first_is_last(&__RECOVERY_POLICY)).await } {
                    #p::Ok(__recovery_value) => {
                        #p::RetryState::first_succeeded(&__RECOVERY_POLICY);
                        return #p::Ok(__recovery_value);
                    }
                    #p::Err(__recovery_error) => {
                        let mut __recovery_retrier: #p::RetryState = #p::Default::default();
                        match #decide {
                            #p::Some(__recovery_sleep) => (__recovery_retrier, __recovery_sleep),
                            #p::None => {
                                #on_give_up
                                return #p::Err(__recovery_error);
                            }
                        }
                    }
                };
            #captures
            return #p::attempt_future::<#ret, _>(async move {
                let mut __recovery_sleep = __recovery_sleep;
                loop {
                    __recovery_sleep.await;
                    #before_each_retry
                    let __recovery_result = __recovery_body(__recovery_retrier.is_last_attempt(&__RECOVERY_POLICY)).await;
                    __recovery_sleep = match { __recovery_result } {
                        #p::Ok(__recovery_value) => {
                            __recovery_retrier.succeeded(&__RECOVERY_POLICY);
                            return #p::Ok(__recovery_value);
                        }
                        #p::Err(__recovery_error) => match #decide {
                            #p::Some(__recovery_sleep) => __recovery_sleep,
                            #p::None => {
                                #on_give_up
                                return #p::Err(__recovery_error);
                            }
                        },
                    };
                }
            }).await;
        }}
    } else {
        quote! {{
            #prologue
            loop {
                #attempt_args
                match #p::attempt::<#ret, _>(|| #body) {
                    #p::Ok(__recovery_value) => {
                        __recovery_retrier.succeeded(&__RECOVERY_POLICY);
                        return #p::Ok(__recovery_value);
                    }
                    #p::Err(__recovery_error) => {
                        let __recovery_decision = #classify;
                        #error_text
                        if !__recovery_retrier.retry_blocking((&__RECOVERY_POLICY, #name, #started), &__recovery_text, __recovery_decision) {
                            #on_give_up
                            return #p::Err(__recovery_error);
                        }
                    }
                }
            }
        }}
    };
    func.block = Box::new(syn::parse2(block)?);
    Ok(func)
}

struct Arguments {
    /// `let mut __recovery_slotN = Some(__recovery_argN);` before the loop.
    slots: Vec<TokenStream>,
    /// Per attempt: the user's patterns bound to a clone or a reborrow.
    binds: Vec<TokenStream>,
}

/// Writes the statements that give each attempt its own arguments: a
/// by-value parameter is moved into a slot before the loop and bound again
/// (cloned) at each attempt; a `&mut` parameter is reborrowed. Plain names
/// are shadowed, so the signature keeps them (minus `mut`, which moves to
/// the per-attempt binding); other patterns get a hidden name.
fn rebind_arguments(func: &mut ItemFn, p: &TokenStream) -> Arguments {
    let mut slots = Vec::new();
    let mut binds = Vec::new();
    for (i, input) in func.sig.inputs.iter_mut().enumerate() {
        let FnArg::Typed(arg) = input else { continue };
        let ty_span = arg.ty.span();
        let simple = match &*arg.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                Some((pi.mutability, pi.ident.clone()))
            }
            _ => None,
        };
        match (&*arg.ty, simple) {
            (Type::Reference(r), Some((mutability, ident))) if r.mutability.is_some() => {
                binds.push(quote!(let #mutability #ident = &mut *#ident;));
                strip_mut(&mut arg.pat);
            }
            // Shared references are `Copy`, and `&mut` behind a pattern
            // cannot be reborrowed: the attempt uses them as they are.
            (Type::Reference(_), _) => {}
            (_, simple) => {
                let slot = format_ident!("__recovery_slot{}", i);
                let (source, pat) = match simple {
                    Some((mutability, ident)) => {
                        strip_mut(&mut arg.pat);
                        (ident.clone(), quote!(#mutability #ident))
                    }
                    None => {
                        let hidden = format_ident!("__recovery_arg{}", i);
                        let pat = arg.pat.to_token_stream();
                        *arg.pat = Pat::Ident(syn::PatIdent {
                            attrs: Vec::new(),
                            by_ref: None,
                            mutability: None,
                            ident: hidden.clone(),
                            subpat: None,
                        });
                        (hidden, pat)
                    }
                };
                slots.push(quote!(let mut #slot = #p::Some(#source);));
                // Spanned at the type, so a missing `Clone` points there.
                binds.push(respan(
                    quote!(let #pat = #p::take_or_clone(&mut #slot, __recovery_last);),
                    ty_span,
                ));
            }
        }
    }
    Arguments { slots, binds }
}

fn strip_mut(pat: &mut Pat) {
    if let Pat::Ident(pi) = pat {
        pi.mutability = None;
    }
}
