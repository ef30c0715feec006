#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug)]
struct monitor;
#[doc(hidden)]
#[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
const _: () = {
    #[allow(clippy::unused_async)]
    async fn __durable_monitor(
        ctx: OrchestrationContext,
    ) -> Result<(), OrchestrationError> {
        let started = std::time::Instant::now();
        loop {
            ctx.create_timer(std::time::Duration::from_secs(60)).await;
        }
    }
    #[automatically_derived]
    impl ::core::ops::Deref for monitor {
        type Target = fn(
            ::durable_core::__private::OrchestrationContext,
        ) -> ::durable_core::__private::BoxFuture<
            'static,
            Result<(), OrchestrationError>,
        >;
        fn deref(&self) -> &Self::Target {
            const __DURABLE_F: fn(
                ::durable_core::__private::OrchestrationContext,
            ) -> ::durable_core::__private::BoxFuture<
                'static,
                Result<(), OrchestrationError>,
            > = |__durable_c| ::std::boxed::Box::pin(__durable_monitor(__durable_c));
            &__DURABLE_F
        }
    }
    const _: fn() = || {
        {
            fn __durable_assert_outcome<T: ::durable_core::__private::TaskOutcome>() {}
            __durable_assert_outcome::<Result<(), OrchestrationError>>();
        }
    };
    #[automatically_derived]
    impl ::durable_core::__private::Orchestrator for monitor {
        type Input = ();
        type Output = <Result<
            (),
            OrchestrationError,
        > as ::durable_core::__private::TaskOutcome>::Ok;
        const NAME: &'static str = "monitor";
        const VERSION: ::core::option::Option<&'static str> = ::core::option::Option::None;
    }
    fn __durable_invoke(
        __durable_context: ::durable_core::__private::OrchestrationContext,
        __durable_input: ::core::option::Option<::std::string::String>,
    ) -> ::durable_core::__private::BoxFuture<
        'static,
        ::durable_core::__private::Outcome,
    > {
        ::std::boxed::Box::pin(async move {
            let __durable_ctx = __durable_context;
            let () = ::durable_core::__private::decode_input::<
                (),
            >("orchestrator 'monitor'", __durable_input.as_deref())?;
            ::durable_core::__private::TaskOutcome::into_outcome(
                __durable_monitor(__durable_ctx).await,
            )
        })
    }
    ::durable_core::__private::inventory::submit! {
        ::durable_core::__private::OrchestratorRegistration { name : "monitor", version :
        ::core::option::Option::None, invoke : __durable_invoke, input :
        ::durable_core::__private::InputType::of_orchestrator:: < monitor > (), location
        : ::core::concat!(::core::module_path!(), "::", ::core::stringify!(monitor),
        " at ", ::core::file!(), ":", ::core::line!()), }
    }
};
#[doc(hidden)]
const _: () = {
    #[deprecated(
        note = "this loop awaits durable work forever without `ctx.continue_as_new(..)`: the history grows without bound and every replay gets slower; continue as new every so often (or mark the loop #[nondeterministic] to silence this)"
    )]
    #[allow(dead_code)]
    fn unbounded_history_0() {}
    #[allow(dead_code)]
    fn __durable_warn_0() {
        unbounded_history_0();
    }
};
