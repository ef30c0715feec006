//! `#[entity]` expansion: on an `impl` block, a dispatcher from operation names to methods,
//! typed call and signal proxies and an `Entity` impl; on an `async fn(ctx, op)`, the
//! registration of a function-style entity.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, ItemFn, ItemImpl, Pat, ReturnType, Type};

use crate::parse::Args;

fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        Type::Reference(r) => last_segment(&r.elem),
        _ => None,
    }
}

struct Op {
    ident: syn::Ident,
    input: Option<(syn::Ident, Type)>,
    takes_ctx: bool,
    is_async: bool,
    ret: Type,
    ret_is_result: bool,
}

fn options(args: Args, default_name: String, errors: &mut Vec<syn::Error>) -> String {
    let mut name = default_name;
    for opt in args.opts {
        if opt.key == "name" {
            let v = opt.value.value();
            if v.trim().is_empty() || v.contains(['@', ' ']) {
                errors.push(syn::Error::new_spanned(
                    &opt.value,
                    "an entity name must be non-empty, without '@' or spaces",
                ));
            }
            name = v;
        } else {
            errors.push(syn::Error::new_spanned(
                &opt.key,
                format!(
                    "unknown #[entity] option `{}`; expected one of: name",
                    opt.key
                ),
            ));
        }
    }
    name.to_lowercase()
}

/// Expands `#[entity]` on an `impl` block.
pub fn expand_impl(args: Args, item: ItemImpl, errors: &mut Vec<syn::Error>) -> TokenStream {
    let self_ty = &item.self_ty;
    let type_name = last_segment(self_ty).unwrap_or_default();
    let name = options(args, type_name.clone(), errors);
    if !item.generics.params.is_empty() {
        errors.push(syn::Error::new(
            item.generics.span(),
            "#[entity] state types cannot be generic",
        ));
    }
    if let Some((_, path, _)) = &item.trait_ {
        errors.push(syn::Error::new_spanned(
            path,
            "#[entity] goes on an inherent `impl State { ... }` block, not a trait impl",
        ));
    }
    let mut ops = Vec::new();
    for it in &item.items {
        let ImplItem::Fn(f) = it else { continue };
        if !matches!(f.vis, syn::Visibility::Public(_)) {
            continue;
        }
        let sig = &f.sig;
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(r)) if r.reference.is_some() => {}
            Some(FnArg::Receiver(r)) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    "entity operations take `&self` or `&mut self`, not `self`",
                ));
                continue;
            }
            _ => {
                errors.push(syn::Error::new_spanned(
                    &sig.ident,
                    "public methods of an #[entity] impl are operations and take `&self` or `&mut self`; make helper functions private",
                ));
                continue;
            }
        }
        if !sig.generics.params.is_empty() {
            errors.push(syn::Error::new(
                sig.generics.span(),
                "entity operations cannot be generic",
            ));
            continue;
        }
        let mut takes_ctx = false;
        let mut input = None;
        let mut bad = false;
        for (i, arg) in inputs.enumerate() {
            let FnArg::Typed(t) = arg else { continue };
            if last_segment(&t.ty).as_deref() == Some("EntityContext") {
                if i != 0 {
                    errors.push(syn::Error::new_spanned(
                        &t.ty,
                        "the `EntityContext` must come right after `self`",
                    ));
                    bad = true;
                }
                takes_ctx = true;
                continue;
            }
            if input.is_some() {
                errors.push(syn::Error::new_spanned(
                    &t.ty,
                    "entity operations take at most one input; pass a struct or a tuple to carry more",
                ));
                bad = true;
                continue;
            }
            if let Type::Reference(r) = &*t.ty {
                errors.push(syn::Error::new_spanned(
                    r,
                    "entity operation inputs must be owned types (they are deserialized)",
                ));
                bad = true;
                continue;
            }
            let ident = match &*t.pat {
                Pat::Ident(p) => p.ident.clone(),
                _ => format_ident!("__durable_input"),
            };
            input = Some((ident, (*t.ty).clone()));
        }
        if bad {
            continue;
        }
        let ret: Type = match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, t) => (**t).clone(),
        };
        let ret_is_result = last_segment(&ret).as_deref() == Some("Result");
        ops.push(Op {
            ident: sig.ident.clone(),
            input,
            takes_ctx,
            is_async: sig.asyncness.is_some(),
            ret,
            ret_is_result,
        });
    }
    if !errors.is_empty() {
        return quote!(#item);
    }

    let op_names: Vec<String> = ops.iter().map(|o| o.ident.to_string()).collect();
    let listed = op_names.join(", ");
    let has_delete = op_names.iter().any(|n| n == "delete");
    let calls = format_ident!("{}EntityCalls", type_name);
    let signals = format_ident!("{}EntitySignals", type_name);

    let arms = ops.iter().map(|o| {
        let ident = &o.ident;
        let op_name = ident.to_string();
        let decode = o.input.as_ref().map(|(n, t)| {
            quote! { let #n: #t = __durable_op.input()?; }
        });
        let mut args = Vec::new();
        if o.takes_ctx {
            args.push(quote!(&__durable_typed));
        }
        if let Some((n, _)) = &o.input {
            args.push(quote!(#n));
        }
        let call = if o.is_async {
            quote!(__durable_state.#ident(#(#args),*).await)
        } else {
            quote!(__durable_state.#ident(#(#args),*))
        };
        let outcome = if o.ret_is_result {
            quote!(::durable_core::__private::TaskOutcome::into_outcome(#call))
        } else {
            quote!(::durable_core::__private::TaskOutcome::into_outcome(::durable_core::__private::Plain(#call)))
        };
        quote! { #op_name => { #decode #outcome } }
    });
    let delete_arm = (!has_delete).then(|| {
        quote! { "delete" => { __durable_typed.delete_state(); ::core::result::Result::Ok(::core::option::Option::None) } }
    });

    let call_methods = ops.iter().map(|o| {
        let ident = &o.ident;
        let op_name = ident.to_string();
        let ret = &o.ret;
        let out = if o.ret_is_result {
            quote_spanned!(ret.span()=> <#ret as ::durable_core::__private::TaskOutcome>::Ok)
        } else {
            quote!(#ret)
        };
        let (param, arg) = match &o.input {
            Some((n, t)) => (quote!(#n: #t), quote!(&#n)),
            None => (quote!(), quote!(&())),
        };
        let doc = format!("Calls `{op_name}` and waits for its result.");
        quote! {
            #[doc = #doc]
            pub fn #ident(&self, #param) -> ::durable_core::__private::DurableFuture<::core::result::Result<#out, ::durable_core::__private::TaskError>> {
                self.ctx.call_entity(&self.id, #op_name, #arg)
            }
        }
    });
    let signal_methods = ops.iter().map(|o| {
        let ident = &o.ident;
        let op_name = ident.to_string();
        let (param, arg) = match &o.input {
            Some((n, t)) => (quote!(#n: #t), quote!(&#n)),
            None => (quote!(), quote!(&())),
        };
        let doc = format!("Signals `{op_name}` (one-way).");
        quote! {
            #[doc = #doc]
            pub async fn #ident(&self, #param) -> ::core::result::Result<(), ::durable_core::__private::Error> {
                self.client.signal_entity(&self.id, #op_name, #arg).await
            }
        }
    });
    let calls_doc =
        format!("Typed calls to a `{name}` entity from an orchestration (generated by #[entity]).");
    let signals_doc =
        format!("Typed signals to a `{name}` entity from a client (generated by #[entity]).");

    quote! {
        #item

        #[doc = #calls_doc]
        #[allow(private_interfaces)]
        pub struct #calls {
            ctx: ::durable_core::__private::OrchestrationContext,
            id: ::durable_core::__private::EntityId,
        }

        #[allow(private_interfaces)]
        impl #calls {
            #(#call_methods)*
        }

        impl ::core::convert::From<(::durable_core::__private::OrchestrationContext, ::durable_core::__private::EntityId)> for #calls {
            fn from((ctx, id): (::durable_core::__private::OrchestrationContext, ::durable_core::__private::EntityId)) -> Self {
                Self { ctx, id }
            }
        }

        #[doc = #signals_doc]
        #[allow(private_interfaces)]
        pub struct #signals {
            client: ::durable_core::__private::DurableClient,
            id: ::durable_core::__private::EntityId,
        }

        #[allow(private_interfaces)]
        impl #signals {
            #(#signal_methods)*
        }

        impl ::core::convert::From<(::durable_core::__private::DurableClient, ::durable_core::__private::EntityId)> for #signals {
            fn from((client, id): (::durable_core::__private::DurableClient, ::durable_core::__private::EntityId)) -> Self {
                Self { client, id }
            }
        }

        #[doc(hidden)]
        #[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
        const _: () = {
            #[automatically_derived]
            impl ::durable_core::__private::Entity for #self_ty {
                const NAME: &'static str = #name;
                type State = #self_ty;
                type Calls = #calls;
                type Signals = #signals;
            }

            fn __durable_entity(
                __durable_ctx: ::durable_core::__private::EntityContext,
                __durable_op: ::durable_core::__private::Operation,
            ) -> ::durable_core::__private::BoxFuture<'static, (::durable_core::__private::EntityContext, ::durable_core::__private::Outcome)> {
                ::std::boxed::Box::pin(async move {
                    let __durable_typed: ::durable_core::__private::EntityContext<#self_ty> = __durable_ctx.clone().retype();
                    let __durable_outcome = async {
                        let mut __durable_state: #self_ty = __durable_typed.get_state()?.unwrap_or_default();
                        let __durable_result: ::durable_core::__private::Outcome = match __durable_op.name.as_str() {
                            #(#arms)*
                            #delete_arm
                            __durable_other => ::core::result::Result::Err(::durable_core::__private::FailureDetails::new(
                                "UnknownOperation",
                                ::std::format!("entity '{}' has no operation '{}'; it has: {}", #name, __durable_other, #listed),
                            )),
                        };
                        if __durable_result.is_ok() && !__durable_typed.is_deleted() {
                            __durable_typed.set_state(&__durable_state);
                        }
                        __durable_result
                    }
                    .await;
                    (__durable_ctx, __durable_outcome)
                })
            }

            ::durable_core::__private::inventory::submit! {
                ::durable_core::__private::EntityRegistration {
                    name: #name,
                    invoke: __durable_entity,
                    location: ::core::concat!(::core::module_path!(), "::", #type_name, " at ", ::core::file!(), ":", ::core::line!()),
                }
            }
        };
    }
}

/// Expands `#[entity]` on a function-style entity `async fn(ctx: EntityContext<S>, op: Operation) -> R`.
pub fn expand_fn(args: Args, item: ItemFn, errors: &mut Vec<syn::Error>) -> TokenStream {
    let name = options(args, item.sig.ident.to_string(), errors);
    if item.sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            item.sig.fn_token,
            "#[entity] functions must be `async fn`",
        ));
    }
    if item.sig.inputs.len() != 2 {
        errors.push(syn::Error::new_spanned(
            &item.sig.inputs,
            "#[entity] functions take `ctx: EntityContext<State>, op: Operation`",
        ));
    }
    if !errors.is_empty() {
        return quote!(#item);
    }
    let ident = &item.sig.ident;
    quote! {
        #item

        #[doc(hidden)]
        #[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
        const _: () = {
            fn __durable_entity(
                __durable_ctx: ::durable_core::__private::EntityContext,
                __durable_op: ::durable_core::__private::Operation,
            ) -> ::durable_core::__private::BoxFuture<'static, (::durable_core::__private::EntityContext, ::durable_core::__private::Outcome)> {
                ::std::boxed::Box::pin(async move {
                    let __durable_outcome = ::durable_core::__private::TaskOutcome::into_outcome(
                        #ident(__durable_ctx.clone().retype(), __durable_op).await,
                    );
                    (__durable_ctx, __durable_outcome)
                })
            }
            ::durable_core::__private::inventory::submit! {
                ::durable_core::__private::EntityRegistration {
                    name: #name,
                    invoke: __durable_entity,
                    location: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident), " at ", ::core::file!(), ":", ::core::line!()),
                }
            }
        };
    }
}
