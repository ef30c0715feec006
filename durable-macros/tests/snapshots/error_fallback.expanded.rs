fn greet(name: &str) -> String {
    name.to_string()
}
::core::compile_error! {
    "unknown #[activity] option `nme`; expected one of: name, timeout"
}
::core::compile_error! {
    "#[activity] functions must be `async fn`; accepted: `async fn name([ctx: ActivityContext,] inputs...) -> R`"
}
::core::compile_error! {
    "#[activity] inputs must be owned types (they are deserialized); use String instead of &str, Vec<T> instead of &[T]"
}
