//! Code generation: the unit struct that names the durable function (callable like the
//! function, and a typed handle), its trait impl, its type-erased entry point and its
//! link-time registration. One file per kind; only validated IR comes in.

mod activity;
mod entity;
mod http_start;
mod orchestrator;

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::Type;

use crate::validate::{Function, Validated};

/// Generates the code for one validated item.
pub fn expand(v: Validated) -> TokenStream {
    match v {
        Validated::Activity(f) => activity::expand(f),
        Validated::Orchestrator(f) => orchestrator::expand(f),
        Validated::HttpStart(f) => http_start::expand(f),
        Validated::EntityImpl(e) => entity::expand_impl(e),
        Validated::EntityFn(e) => entity::expand_fn(e),
    }
}

/// A compile-time assertion, spanned at the user's type, that `ty` can travel through a
/// history; a failure names the type and says what to derive (see `Payload`).
pub(crate) fn assert_payload(ty: &Type) -> TokenStream {
    quote_spanned! {ty.span()=>
        {
            fn __durable_assert_payload<T: ::durable_core::__private::Payload>() {}
            __durable_assert_payload::<#ty>();
        }
    }
}

/// `ty` named through `Checked`, spanned at the user's type: a type that cannot travel
/// through a history is reported there once, and its other uses are not reported again.
pub(crate) fn checked(ty: &Type) -> TokenStream {
    quote_spanned! {ty.span()=> <#ty as ::durable_core::__private::Checked>::Type }
}

/// A compile-time assertion, spanned at the user's return type, that it can be recorded
/// as an outcome (`Result<T, E>` with a serializable `T`, or a serializable value).
pub(crate) fn assert_outcome(ret: &Type, is_result: bool) -> TokenStream {
    if is_result {
        quote_spanned! {ret.span()=>
            {
                fn __durable_assert_outcome<T: ::durable_core::__private::TaskOutcome>() {}
                __durable_assert_outcome::<#ret>();
            }
        }
    } else {
        assert_payload(ret)
    }
}

/// The pieces every kind shares.
pub(crate) struct Common {
    pub outer: TokenStream,
    pub inner_fn: TokenStream,
    pub input_ty: TokenStream,
    pub output_ty: TokenStream,
    pub decode_and_call: TokenStream,
    /// Where the generated future is spanned: the input type of a one-input function, so
    /// a type unfit for a history is reported there once (the future holds the input).
    pub body_span: proc_macro2::Span,
    pub asserts: TokenStream,
    pub deref: TokenStream,
}

/// `decode` names the generic decoder of the kind (`decode_activity_input`, ...), called
/// with the function's unit struct.
pub(crate) fn common(
    f: &Function,
    ctx_ty: TokenStream,
    label: &str,
    decode: TokenStream,
) -> Common {
    let item = &f.item;
    let vis = &item.vis;
    let ident = &item.sig.ident;
    let inner_ident = format_ident!("__durable_{}", ident);
    let (outer_attrs, inner_attrs): (Vec<_>, Vec<_>) = item
        .attrs
        .iter()
        .partition(|a| a.path().is_ident("doc") || a.path().is_ident("cfg"));
    let mut inner_sig = item.sig.clone();
    inner_sig.ident = inner_ident.clone();
    let block = &item.block;
    let inner_fn = quote! {
        #(#inner_attrs)*
        #[allow(clippy::unused_async)]
        #inner_sig #block
    };

    let input_types: Vec<&Type> = f.inputs.iter().map(|(_, t)| t).collect();
    let input_names: Vec<&syn::Ident> = f.inputs.iter().map(|(i, _)| i).collect();
    let checked_types: Vec<TokenStream> = input_types.iter().map(|t| checked(t)).collect();
    let input_ty = match input_types.len() {
        0 => quote!(()),
        1 => {
            let t = &checked_types[0];
            quote!(#t)
        }
        _ => quote!((#(#checked_types),*)),
    };
    let ret = &f.ret;
    let output_ty = if f.ret_is_result {
        quote_spanned!(ret.span()=> <#ret as ::durable_core::__private::TaskOutcome>::Ok)
    } else {
        quote!(#ret)
    };
    let call_args: Vec<TokenStream> = f
        .ctx
        .iter()
        .map(|_| quote!(__durable_ctx))
        .chain(input_names.iter().map(|n| quote!(#n)))
        .collect();
    let binding = match input_names.len() {
        0 => quote! {
            let () = ::durable_core::__private::decode_input::<()>(#label, __durable_input.as_deref())?;
        },
        // The types come from the trait impl (`type Input`), checked there once.
        // Spanned at the type, so a type unfit for a history is reported there once.
        1 => {
            let n = input_names[0];
            let decode_call = quote_spanned! {input_types[0].span()=>
                ::durable_core::__private::#decode::<#ident>(#label, __durable_input.as_deref())
            };
            quote! { let #n = #decode_call?; }
        }
        _ => quote! {
            let (#(#input_names),*) =
                ::durable_core::__private::#decode::<#ident>(#label, __durable_input.as_deref())?;
        },
    };
    let outcome = if f.ret_is_result {
        quote!(::durable_core::__private::TaskOutcome::into_outcome(#inner_ident(#(#call_args),*).await))
    } else {
        quote!(::durable_core::__private::TaskOutcome::into_outcome(::durable_core::__private::Plain(#inner_ident(#(#call_args),*).await)))
    };
    let ctx_binding = if f.ctx.is_some() {
        quote!(let __durable_ctx = __durable_context;)
    } else {
        quote!(let _ = __durable_context;)
    };
    let decode_and_call = quote! {
        #ctx_binding
        #binding
        #outcome
    };

    // Inputs are checked through `Checked` where they are used (above): once, at the type
    // of a one-input function, at the attribute with several (the message names the type).
    let out_assert = assert_outcome(ret, f.ret_is_result);
    let asserts = quote! {
        const _: fn() = || {
            #out_assert
        };
    };

    let ctx_param = f.ctx.as_ref().map(|_| quote!(#ctx_ty,));
    let ctx_arg = f.ctx.as_ref().map(|_| quote!(__durable_c,));
    let fn_ptr = quote!(fn(#ctx_param #(#input_types),*) -> ::durable_core::__private::BoxFuture<'static, #ret>);
    let deref = quote! {
        #[automatically_derived]
        impl ::core::ops::Deref for #ident {
            type Target = #fn_ptr;
            fn deref(&self) -> &Self::Target {
                const __DURABLE_F: #fn_ptr =
                    |#ctx_arg #(#input_names),*| ::std::boxed::Box::pin(#inner_ident(#ctx_arg #(#input_names),*));
                &__DURABLE_F
            }
        }
    };

    let outer = quote! {
        #(#outer_attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        #vis struct #ident;
    };
    let body_span = match input_types.as_slice() {
        [one] => one.span(),
        _ => proc_macro2::Span::call_site(),
    };
    Common {
        outer,
        inner_fn,
        body_span,
        input_ty,
        output_ty,
        decode_and_call,
        asserts,
        deref,
    }
}

/// The `#[cfg]` attributes of the item, repeated on the generated const block.
pub(crate) fn cfgs(f: &Function) -> Vec<&syn::Attribute> {
    f.item
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .collect()
}

/// Wraps generated items in `const _: () = { ... };`.
pub(crate) fn wrap(f: &Function, outer: TokenStream, body: TokenStream) -> TokenStream {
    let cfgs = cfgs(f);
    quote! {
        #outer
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
        const _: () = {
            #body
        };
    }
}
