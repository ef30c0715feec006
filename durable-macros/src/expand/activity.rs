//! `#[activity]` expansion.

use proc_macro2::TokenStream;
use quote::quote;

use super::{common, wrap};
use crate::validate::Function;

pub fn expand(f: Function) -> TokenStream {
    let name = &f.name;
    let label = format!("activity '{name}'");
    let c = common(
        &f,
        quote!(::durable_core::__private::ActivityContext),
        &label,
        quote!(decode_activity_input),
    );
    let ident = &f.item.sig.ident;
    let timeout = match f.timeout_ms {
        Some(ms) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };
    let (inner_fn, input_ty, output_ty, decode_and_call, asserts, deref) = (
        &c.inner_fn,
        &c.input_ty,
        &c.output_ty,
        &c.decode_and_call,
        &c.asserts,
        &c.deref,
    );
    let future = quote::quote_spanned! {c.body_span=>
        ::std::boxed::Box::pin(async move { #decode_and_call })
    };
    let input_item = quote::quote_spanned! {c.body_span=> type Input = #input_ty; };
    let body = quote! {
        #inner_fn
        #deref
        #asserts
        #[automatically_derived]
        impl ::durable_core::__private::Activity for #ident {
            #input_item
            type Output = #output_ty;
            const NAME: &'static str = #name;
        }
        fn __durable_invoke(
            __durable_context: ::durable_core::__private::ActivityContext,
            __durable_input: ::core::option::Option<::std::string::String>,
        ) -> ::durable_core::__private::BoxFuture<'static, ::durable_core::__private::Outcome> {
            #future
        }
        ::durable_core::__private::inventory::submit! {
            ::durable_core::__private::ActivityRegistration {
                name: #name,
                invoke: __durable_invoke,
                start_to_close_ms: #timeout,
                location: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident), " at ", ::core::file!(), ":", ::core::line!()),
            }
        }
    };
    wrap(&f, c.outer, body)
}
