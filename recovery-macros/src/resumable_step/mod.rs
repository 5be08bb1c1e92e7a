//! `#[resumable_step]`: the resume check once, then the body (with any
//! `#[retryable]` under it expanded inside), then the commit.

mod args;

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, ItemFn, Pat, Type};

use crate::errors::Errors;
use crate::function::{contains_impl_trait, result_type};
use args::StepArgs;

pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = StepArgs::parse(attr, &mut errors);
    let mut func = match crate::function::parse(item.clone(), "resumable_step") {
        Ok(func) => func,
        Err(e) => {
            errors.push(e);
            return fallback(item, &errors);
        }
    };
    check(&func, &mut errors);
    let run = find_run(&func, &args, &mut errors);

    // A #[retryable] under this attribute is expanded here, inside the
    // step, so the resume check runs once and not once per attempt.
    let mut retry_path = None;
    if let Some(i) = func.attrs.iter().position(is_retryable) {
        let attr = func.attrs.remove(i);
        retry_path = Some(attr.path().clone());
        let tokens = match attr.meta {
            syn::Meta::List(list) => list.tokens,
            _ => TokenStream::new(),
        };
        let mut retry_args = crate::retryable::parse_args(tokens, &mut errors);
        // Retries inside a step are reported under the step's name.
        if retry_args.name.is_none() {
            retry_args.name = args.name.clone();
        }
        crate::retryable::check(&func, &mut errors);
        if errors.is_empty() {
            let p = args.private_path();
            // Each retried attempt starts from no outputs, and a step that
            // fails reports the attempts its retries made.
            let hooks = crate::retryable::StepHooks {
                before_retry: quote! {
                    if let #p::Err(__recovery_discard) =
                        #p::discard_attempt_outputs(&__recovery_step_run)
                    {
                        return #p::step_error(__recovery_discard);
                    }
                },
                on_give_up: quote! {
                    #p::record_attempts(
                        &__recovery_step_run,
                        __recovery_retrier.failed_attempts(),
                        __recovery_retrier.slept(),
                    );
                },
                captures: quote! {
                    let __recovery_step_run: &#p::Run = &__recovery_step_run;
                },
            };
            match crate::retryable::generate_fn(&retry_args, func, Some(&hooks)) {
                Ok(f) => func = f,
                Err(e) => {
                    errors.push(e);
                    return fallback(item, &errors);
                }
            }
        }
    }
    match (run, &args.name) {
        (Some(run), Some((name, _))) if errors.is_empty() => {
            generate(&args, name, &run, retry_path.as_ref(), func)
        }
        _ => fallback(item, &errors),
    }
}

/// The function as written plus every error, so nothing else piles up.
fn fallback(item: TokenStream, errors: &Errors) -> TokenStream {
    let errors = errors.to_compile_errors();
    quote!(#item #errors)
}

fn is_retryable(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "retryable")
}

fn check(func: &ItemFn, errors: &mut Errors) {
    if let Some(c) = &func.sig.constness {
        errors.at(
            c.span(),
            "#[resumable_step] cannot go on a `const fn`: it reads and writes files; remove `const`",
        );
    }
    match result_type(func, "resumable_step") {
        Ok(ty) if contains_impl_trait(ty) => errors.push(syn::Error::new_spanned(
            ty,
            "a step's value is recorded in its marker, so it needs a named type: replace \
             `impl Trait` in the `Result`",
        )),
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
}

/// The expression that gives the Run: `run = ...`, or the parameter whose
/// type is `Run` (by reference or not).
fn find_run(func: &ItemFn, args: &StepArgs, errors: &mut Errors) -> Option<TokenStream> {
    if let Some(expr) = &args.run {
        return Some(expr.to_token_stream());
    }
    for input in &func.sig.inputs {
        let FnArg::Typed(arg) = input else { continue };
        if !names_run(&arg.ty) {
            continue;
        }
        if let Pat::Ident(pi) = &*arg.pat {
            return Some(pi.ident.to_token_stream());
        }
    }
    errors.at(
        func.sig.ident.span(),
        format!(
            "#[resumable_step] cannot find the Run of `{}`: add a parameter `run: &recovery::Run`, \
             or say where it is with `run = ...` (e.g. `run = self.run`)",
            func.sig.ident
        ),
    );
    None
}

/// Whether a type is `Run`, `&Run`, `&mut Run`, `recovery::Run`, ...
fn names_run(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => names_run(&r.elem),
        Type::Paren(p) => names_run(&p.elem),
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Run"),
        _ => false,
    }
}

fn generate(
    args: &StepArgs,
    name: &str,
    run: &TokenStream,
    retry_path: Option<&syn::Path>,
    mut func: ItemFn,
) -> TokenStream {
    let p = args.private_path();
    let ret = match result_type(&func, "resumable_step") {
        Ok(ty) => ty.clone(),
        Err(e) => return e.to_compile_error(),
    };
    let version = args.version;
    let verify = match args.verify {
        args::VerifyMode::Hash => quote!(#p::Verify::Hash),
        args::VerifyMode::SizeMtime => quote!(#p::Verify::SizeMtime),
    };
    let key = match &args.key {
        Some(Expr::Tuple(t)) => t.to_token_stream(),
        Some(expr) => quote!((#expr)),
        None => quote!(()),
    };
    // Spanned at the key, so a key that is not serialisable is named there.
    let fingerprint = match &args.key {
        Some(expr) => {
            crate::function::respan(quote!(#p::fingerprint(#name, &#key, #version)), expr.span())
        }
        None => quote!(#p::fingerprint(#name, &#key, #version)),
    };
    // Spanned at the item, so an item that is not serialisable is named there.
    let family = args.item.is_some();
    let instance = match &args.item {
        Some(expr) => crate::function::respan(quote!(#p::step_item(#name, &(#expr))), expr.span()),
        None => quote!(#p::plain_step(#name)),
    };
    let fn_name = func.sig.ident.to_string();
    let body = &func.block;
    let call = if func.sig.asyncness.is_some() {
        quote! {
            #p::run_step_async::<#ret, _>(&__recovery_step_run, __recovery_step_call, async #body).await
        }
    } else {
        quote! {
            #p::run_step::<#ret, _>(&__recovery_step_run, __recovery_step_call, || #body)
        }
    };
    // The #[retryable] attribute was expanded here, not resolved by the
    // compiler: name it once so its import does not look unused.
    let retry_use = retry_path.map(|path| quote!(#[allow(unused_imports)] use #path as _;));
    let block = quote! {{
        #retry_use
        const __RECOVERY_STEP: #p::StepDef = #p::StepDef {
            name: #name,
            version: #version,
            site: ::core::concat!(::core::module_path!(), "::", #fn_name),
            verify: #verify,
            family: #family,
        };
        // An owned handle, so the body may borrow what the Run came from.
        let __recovery_step_run: #p::Run = #p::Clone::clone(#p::borrow_run(&(#run)));
        // Identified and fingerprinted before the body takes its arguments.
        let __recovery_step_call = #p::StepCall {
            def: &__RECOVERY_STEP,
            instance: #instance,
            fingerprint: #fingerprint,
        };
        #call
    }};
    match syn::parse2(block) {
        Ok(block) => {
            func.block = Box::new(block);
            func.into_token_stream()
        }
        Err(e) => e.to_compile_error(),
    }
}
