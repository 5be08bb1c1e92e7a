//! The item under an attribute: a function with a body, or a clear error
//! naming what it is instead.

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{Item, ItemFn, TraitItemFn, Type};

/// Parses the item as a function with a body. Trait methods with a default
/// body are accepted too (printed back with no visibility, as the trait
/// needs).
pub fn parse(item: TokenStream, attribute: &str) -> syn::Result<ItemFn> {
    if let Ok(f) = syn::parse2::<ItemFn>(item.clone()) {
        return Ok(f);
    }
    if let Ok(f) = syn::parse2::<TraitItemFn>(item.clone()) {
        return match f.default {
            Some(block) => Ok(ItemFn {
                attrs: f.attrs,
                vis: syn::Visibility::Inherited,
                modifiers: f.modifiers,
                sig: f.sig,
                block: Box::new(block),
            }),
            None => Err(syn::Error::new(
                f.semi_token.map_or_else(|| f.sig.span(), |s| s.span()),
                format!(
                    "#[{attribute}] needs a function body to run: a trait method without one has \
                     nothing to run; put #[{attribute}] on the method in each impl instead"
                ),
            )),
        };
    }
    let what = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Struct(_)) => "a struct",
        Ok(Item::Enum(_)) => "an enum",
        Ok(Item::Union(_)) => "a union",
        Ok(Item::Const(_)) => "a const",
        Ok(Item::Static(_)) => "a static",
        Ok(Item::Impl(_)) => "an impl block (put it on a method inside)",
        Ok(Item::Trait(_)) => "a trait (put it on a method of an impl)",
        Ok(Item::Mod(_)) => "a module",
        Ok(Item::Type(_)) => "a type alias",
        Ok(Item::Use(_)) => "a use declaration",
        Ok(Item::Macro(_)) => "a macro invocation",
        _ => "not a function",
    };
    let span = item
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span());
    Err(syn::Error::new(
        span,
        format!("#[{attribute}] goes on a function (fn or async fn); this is {what}"),
    ))
}

/// The type named `Result` that the function returns, or an error that says
/// what was found instead.
pub fn result_type<'a>(func: &'a ItemFn, attribute: &str) -> syn::Result<&'a Type> {
    let ty = match &func.sig.output {
        syn::ReturnType::Type(_, ty) => &**ty,
        syn::ReturnType::Default => {
            return Err(syn::Error::new(
                func.sig.ident.span(),
                format!(
                    "#[{attribute}] needs a function that returns `Result<T, E>`, so it can tell \
                     failure from success; `{}` returns nothing",
                    func.sig.ident
                ),
            ));
        }
    };
    let last = match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    };
    match last.as_deref() {
        Some("Result") => Ok(ty),
        Some("Pin") => Err(syn::Error::new_spanned(
            ty,
            format!(
                "this function returns a boxed future, as #[async_trait] writes it: #[{attribute}] \
                 would only repeat building the future, not the work. Put the work in an inherent \
                 `async fn` with #[{attribute}] and call it from the trait method"
            ),
        )),
        _ => Err(syn::Error::new_spanned(
            ty,
            format!(
                "#[{attribute}] needs a function that returns `Result<T, E>` (or an alias named \
                 `Result`, such as `io::Result<T>`), so it can tell failure from success; found `{}`",
                show(ty)
            ),
        )),
    }
}

/// Whether a type mentions `impl Trait` anywhere.
pub fn contains_impl_trait(ty: &Type) -> bool {
    fn scan(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|t| match t {
            proc_macro2::TokenTree::Ident(i) => i == "impl",
            proc_macro2::TokenTree::Group(g) => scan(g.stream()),
            _ => false,
        })
    }
    scan(quote::ToTokens::to_token_stream(ty))
}

/// Tokens as a person would write them: `Option<u32>`, not `Option < u32 >`.
pub fn show(tokens: &impl quote::ToTokens) -> String {
    let text = tokens.to_token_stream().to_string();
    [
        (" < ", "<"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        (" :: ", "::"),
        (":: ", "::"),
        (" ,", ","),
        ("& ", "&"),
        ("( ", "("),
        (" )", ")"),
    ]
    .iter()
    .fold(text, |t, (from, to)| t.replace(from, to))
}

/// Gives every token of `tokens` the span `span` (resolved at the call
/// site), so that an error in generated code points at one piece of user
/// code instead of the whole attribute.
pub fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    let span = Span::call_site().located_at(span);
    tokens
        .into_iter()
        .map(|mut t| {
            if let proc_macro2::TokenTree::Group(g) = &t {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                t = proc_macro2::TokenTree::Group(group);
            } else {
                t.set_span(span);
            }
            t
        })
        .collect()
}
