async fn start_hello(client: DurableClient, req: HttpRequest) -> HttpResult {
    let id = client
        .start(hello_cities, vec![req.param("city").unwrap_or_default()])
        .await?;
    Ok(client.check_status_response(&req, &id))
}
#[doc(hidden)]
#[allow(non_upper_case_globals, non_snake_case, unused_qualifications, clippy::all)]
const _: () = {
    fn __durable_handler(
        client: ::durable_http::__private::DurableClient,
        req: ::durable_http::__private::HttpRequest,
    ) -> ::durable_http::__private::BoxFuture<
        'static,
        ::durable_http::__private::HttpResult,
    > {
        ::std::boxed::Box::pin(async move {
            ::durable_http::__private::IntoHttpResult::into_http_result(
                start_hello(client, req).await,
            )
        })
    }
    ::durable_http::__private::inventory::submit! {
        ::durable_http::__private::HttpStartRegistration { route : "/api/hello/{city}",
        methods : & ["GET", "POST"], handler : __durable_handler, location :
        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(start_hello),
        " at ", ::core::file!(), ":", ::core::line!()), }
    }
};
