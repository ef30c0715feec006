#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug)]
struct say_hello;
#[doc(hidden)]
#[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
const _: () = {
    #[allow(clippy::unused_async)]
    async fn __durable_say_hello(city: String) -> String {
        format!("Hello {city}!")
    }
    #[automatically_derived]
    impl ::core::ops::Deref for say_hello {
        type Target = fn(
            String,
        ) -> ::durable_core::__private::BoxFuture<'static, String>;
        fn deref(&self) -> &Self::Target {
            const __DURABLE_F: fn(
                String,
            ) -> ::durable_core::__private::BoxFuture<'static, String> = |city| ::std::boxed::Box::pin(
                __durable_say_hello(city),
            );
            &__DURABLE_F
        }
    }
    const _: fn() = || {
        {
            fn __durable_assert_payload<T: ::durable_core::__private::Payload>() {}
            __durable_assert_payload::<String>();
        }
    };
    #[automatically_derived]
    impl ::durable_core::__private::Activity for say_hello {
        type Input = <String as ::durable_core::__private::Checked>::Type;
        type Output = String;
        const NAME: &'static str = "say_hello";
    }
    fn __durable_invoke(
        __durable_context: ::durable_core::__private::ActivityContext,
        __durable_input: ::core::option::Option<::std::string::String>,
    ) -> ::durable_core::__private::BoxFuture<
        'static,
        ::durable_core::__private::Outcome,
    > {
        ::std::boxed::Box::pin(async move {
            let _ = __durable_context;
            let city = ::durable_core::__private::decode_activity_input::<
                say_hello,
            >("activity 'say_hello'", __durable_input.as_deref())?;
            ::durable_core::__private::TaskOutcome::into_outcome(
                ::durable_core::__private::Plain(__durable_say_hello(city).await),
            )
        })
    }
    ::durable_core::__private::inventory::submit! {
        ::durable_core::__private::ActivityRegistration { name : "say_hello", invoke :
        __durable_invoke, start_to_close_ms : ::core::option::Option::None, location :
        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(say_hello),
        " at ", ::core::file!(), ":", ::core::line!()), }
    }
};
