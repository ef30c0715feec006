//! `#[http_start]` expansion: the function as written, plus its registration.

use proc_macro2::TokenStream;
use quote::quote;

use crate::validate::HttpStart;

pub fn expand(f: HttpStart) -> TokenStream {
    let item = &f.item;
    let ident = &item.sig.ident;
    let route = &f.route;
    let methods = &f.methods;
    let cfgs: Vec<_> = item
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .collect();
    quote! {
        #item
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
        const _: () = {
            fn __durable_handler(
                client: ::durable_http::__private::DurableClient,
                req: ::durable_http::__private::HttpRequest,
            ) -> ::durable_http::__private::BoxFuture<'static, ::durable_http::__private::HttpResult> {
                ::std::boxed::Box::pin(async move {
                    ::durable_http::__private::IntoHttpResult::into_http_result(#ident(client, req).await)
                })
            }
            ::durable_http::__private::inventory::submit! {
                ::durable_http::__private::HttpStartRegistration {
                    route: #route,
                    methods: &[#(#methods),*],
                    handler: __durable_handler,
                    location: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident), " at ", ::core::file!(), ":", ::core::line!()),
                }
            }
        };
    }
}
