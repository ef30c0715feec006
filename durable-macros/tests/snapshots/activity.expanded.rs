/// Adds three numbers.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug)]
pub struct add;
#[doc(hidden)]
#[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
const _: () = {
    #[allow(clippy::unused_async)]
    async fn __durable_add(
        ctx: ActivityContext,
        a: i64,
        b: i64,
        c: i64,
    ) -> Result<i64, ActivityError> {
        let _ = ctx.attempt();
        Ok(a + b + c)
    }
    #[automatically_derived]
    impl ::core::ops::Deref for add {
        type Target = fn(
            ::durable_core::__private::ActivityContext,
            i64,
            i64,
            i64,
        ) -> ::durable_core::__private::BoxFuture<'static, Result<i64, ActivityError>>;
        fn deref(&self) -> &Self::Target {
            const __DURABLE_F: fn(
                ::durable_core::__private::ActivityContext,
                i64,
                i64,
                i64,
            ) -> ::durable_core::__private::BoxFuture<
                'static,
                Result<i64, ActivityError>,
            > = |__durable_c, a, b, c| ::std::boxed::Box::pin(
                __durable_add(__durable_c, a, b, c),
            );
            &__DURABLE_F
        }
    }
    const _: fn() = || {
        {
            fn __durable_assert_outcome<T: ::durable_core::__private::TaskOutcome>() {}
            __durable_assert_outcome::<Result<i64, ActivityError>>();
        }
    };
    #[automatically_derived]
    impl ::durable_core::__private::Activity for add {
        type Input = (
            <i64 as ::durable_core::__private::Checked>::Type,
            <i64 as ::durable_core::__private::Checked>::Type,
            <i64 as ::durable_core::__private::Checked>::Type,
        );
        type Output = <Result<
            i64,
            ActivityError,
        > as ::durable_core::__private::TaskOutcome>::Ok;
        const NAME: &'static str = "add_numbers";
    }
    fn __durable_invoke(
        __durable_context: ::durable_core::__private::ActivityContext,
        __durable_input: ::core::option::Option<::std::string::String>,
    ) -> ::durable_core::__private::BoxFuture<
        'static,
        ::durable_core::__private::Outcome,
    > {
        ::std::boxed::Box::pin(async move {
            let __durable_ctx = __durable_context;
            let (a, b, c) = ::durable_core::__private::decode_activity_input::<
                add,
            >("activity 'add_numbers'", __durable_input.as_deref())?;
            ::durable_core::__private::TaskOutcome::into_outcome(
                __durable_add(__durable_ctx, a, b, c).await,
            )
        })
    }
    ::durable_core::__private::inventory::submit! {
        ::durable_core::__private::ActivityRegistration { name : "add_numbers", invoke :
        __durable_invoke, start_to_close_ms : ::core::option::Option::Some(30000u64),
        location : ::core::concat!(::core::module_path!(), "::", ::core::stringify!(add),
        " at ", ::core::file!(), ":", ::core::line!()), }
    }
};
