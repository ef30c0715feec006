async fn audit(ctx: EntityContext<u64>, op: Operation) -> Result<u64, FailureDetails> {
    let n = ctx.get_state_or_default()? + 1;
    ctx.set_state(&n);
    Ok(n)
}
#[doc(hidden)]
#[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
const _: () = {
    fn __durable_entity(
        __durable_ctx: ::durable_core::__private::EntityContext,
        __durable_op: ::durable_core::__private::Operation,
    ) -> ::durable_core::__private::BoxFuture<
        'static,
        (::durable_core::__private::EntityContext, ::durable_core::__private::Outcome),
    > {
        ::std::boxed::Box::pin(async move {
            let __durable_outcome = ::durable_core::__private::TaskOutcome::into_outcome(
                audit(__durable_ctx.clone().retype(), __durable_op).await,
            );
            (__durable_ctx, __durable_outcome)
        })
    }
    ::durable_core::__private::inventory::submit! {
        ::durable_core::__private::EntityRegistration { name : "audit", invoke :
        __durable_entity, operations : ::core::option::Option::None, location :
        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(audit), " at ",
        ::core::file!(), ":", ::core::line!()), }
    }
};
