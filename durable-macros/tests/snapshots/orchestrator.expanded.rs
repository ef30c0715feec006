#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug)]
pub struct hello_cities;
#[doc(hidden)]
#[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
const _: () = {
    #[allow(clippy::unused_async)]
    async fn __durable_hello_cities(
        ctx: OrchestrationContext,
        cities: Vec<String>,
    ) -> Result<Vec<String>, OrchestrationError> {
        let mut out = Vec::new();
        for city in cities {
            out.push(ctx.call_activity(say_hello, city).await?);
        }
        Ok(out)
    }
    #[automatically_derived]
    impl ::core::ops::Deref for hello_cities {
        type Target = fn(
            ::durable_core::__private::OrchestrationContext,
            Vec<String>,
        ) -> ::durable_core::__private::BoxFuture<
            'static,
            Result<Vec<String>, OrchestrationError>,
        >;
        fn deref(&self) -> &Self::Target {
            const __DURABLE_F: fn(
                ::durable_core::__private::OrchestrationContext,
                Vec<String>,
            ) -> ::durable_core::__private::BoxFuture<
                'static,
                Result<Vec<String>, OrchestrationError>,
            > = |__durable_c, cities| ::std::boxed::Box::pin(
                __durable_hello_cities(__durable_c, cities),
            );
            &__DURABLE_F
        }
    }
    const _: fn() = || {
        {
            fn __durable_assert_outcome<T: ::durable_core::__private::TaskOutcome>() {}
            __durable_assert_outcome::<Result<Vec<String>, OrchestrationError>>();
        }
    };
    #[automatically_derived]
    impl ::durable_core::__private::Orchestrator for hello_cities {
        type Input = <Vec<String> as ::durable_core::__private::Checked>::Type;
        type Output = <Result<
            Vec<String>,
            OrchestrationError,
        > as ::durable_core::__private::TaskOutcome>::Ok;
        const NAME: &'static str = "greeter";
        const VERSION: ::core::option::Option<&'static str> = ::core::option::Option::Some(
            "2",
        );
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
            let cities = ::durable_core::__private::decode_orchestrator_input::<
                hello_cities,
            >("orchestrator 'greeter'", __durable_input.as_deref())?;
            ::durable_core::__private::TaskOutcome::into_outcome(
                __durable_hello_cities(__durable_ctx, cities).await,
            )
        })
    }
    ::durable_core::__private::inventory::submit! {
        ::durable_core::__private::OrchestratorRegistration { name : "greeter", version :
        ::core::option::Option::Some("2"), invoke : __durable_invoke, input :
        ::durable_core::__private::InputType::of_orchestrator:: < hello_cities > (),
        location : ::core::concat!(::core::module_path!(), "::",
        ::core::stringify!(hello_cities), " at ", ::core::file!(), ":", ::core::line!()),
        }
    }
};
