//! Compile-pass and compile-fail fixtures for the attribute macros. Regenerate the
//! expected messages with `TRYBUILD=overwrite cargo test -p durable-tests --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/*/pass/*.rs");
    t.compile_fail("ui/*/fail/*.rs");
}
