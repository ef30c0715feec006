//! Payloads: how the JSON text of an input, an event's data or an entity operation's input
//! becomes a user type, and how a door checks it before anything is stored.
//!
//! One decoding rule serves every path ([`decode`]): the JSON is read as the target type;
//! when that fails and the JSON is a string whose content is JSON of the target type, the
//! content is used. Durable Functions' Python client sends payloads that way (it
//! JSON-encodes the value, then posts that text as a JSON string). A target type that is
//! itself a string keeps the plain meaning: the first reading wins.
//!
//! Every reading goes through `serde_json`'s recursion limit (128 levels), so deeply nested
//! input is an error, never a stack overflow.

use std::fmt;

use serde::de::{DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::history::FailureDetails;

/// Decodes a JSON payload (absent = `null`) by the rule above. The error is the one of the
/// inner JSON when the payload is a string holding JSON, the outer one otherwise.
pub fn decode<T: DeserializeOwned>(payload: Option<&str>) -> Result<T, serde_json::Error> {
    decode_form(payload).map(|(value, _)| value)
}

/// Like [`decode`], also saying which form decoded: `Some(inner)` (the string's content)
/// when the value came from a JSON string holding JSON, `None` when the payload itself did.
fn decode_form<T: DeserializeOwned>(
    payload: Option<&str>,
) -> Result<(T, Option<String>), serde_json::Error> {
    let text = payload.unwrap_or("null");
    let outer = match serde_json::from_str::<T>(text) {
        Ok(value) => return Ok((value, None)),
        Err(e) => e,
    };
    let Ok(inner) = serde_json::from_str::<String>(text) else {
        return Err(outer);
    };
    if check_json(&inner).is_err() {
        return Err(outer);
    }
    serde_json::from_str::<T>(&inner).map(|value| (value, Some(inner)))
}

/// Decodes a function's input, with a failure naming the function.
pub fn decode_input<T: DeserializeOwned>(
    what: &str,
    payload: Option<&str>,
) -> Result<T, FailureDetails> {
    decode(payload).map_err(|e| {
        FailureDetails::new(
            "InvalidInput",
            format!("input of {what} does not match its parameter types: {e}"),
        )
    })
}

/// Decodes the input of the activity `A` (generated code: the bound comes from the trait,
/// so a type unfit for a history is reported once, where the macro checks it).
pub fn decode_activity_input<A: crate::function::Activity>(
    what: &str,
    payload: Option<&str>,
) -> Result<A::Input, FailureDetails> {
    decode_input(what, payload)
}

/// Decodes the input of the orchestrator `O` (generated code, like
/// [`decode_activity_input`]).
pub fn decode_orchestrator_input<O: crate::function::Orchestrator>(
    what: &str,
    payload: Option<&str>,
) -> Result<O::Input, FailureDetails> {
    decode_input(what, payload)
}

/// Checks that `text` is one well-formed JSON value no deeper than `serde_json`'s
/// recursion limit, without building it in memory.
pub fn check_json(text: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<WellFormed>(text).map(|_| ())
}

/// Accepts any JSON value, descending through `deserialize_any` so the recursion limit
/// applies (`IgnoredAny` skips values without counting depth).
struct WellFormed;

impl<'de> Deserialize<'de> for WellFormed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WellFormedVisitor)
    }
}

struct WellFormedVisitor;

impl<'de> Visitor<'de> for WellFormedVisitor {
    type Value = WellFormed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_i64<E>(self, _: i64) -> Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_u64<E>(self, _: u64) -> Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_f64<E>(self, _: f64) -> Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_str<E>(self, _: &str) -> Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_unit<E>(self) -> Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WellFormed, A::Error> {
        while seq.next_element::<WellFormed>()?.is_some() {}
        Ok(WellFormed)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WellFormed, A::Error> {
        while map.next_entry::<IgnoredAny, WellFormed>()?.is_some() {}
        Ok(WellFormed)
    }
}

/// The input type of an orchestrator or entity operation, type-erased so a door can check
/// a JSON payload against it before storing anything. Built by [`InputType::of`]; the
/// attribute macros and [`RegistryBuilder`](crate::registry::RegistryBuilder) record one
/// per orchestrator and per typed entity operation.
#[derive(Clone, Copy)]
pub struct InputType {
    type_name: fn() -> &'static str,
    check: fn(Option<&str>) -> Result<Option<String>, String>,
}

impl fmt::Debug for InputType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl InputType {
    /// The input type `T`. (The `Payload` bound also serves the attribute macros as the
    /// compile-time check, spanned at the user's type, that `T` can travel through a
    /// history.)
    pub const fn of<T: crate::function::Payload>() -> Self {
        Self {
            type_name: std::any::type_name::<T>,
            check: check_as::<T>,
        }
    }

    /// The input type of orchestrator `O`.
    pub const fn of_orchestrator<O: crate::function::Orchestrator>() -> Self {
        Self::of::<O::Input>()
    }

    /// The type's name without module paths (`Vec<String>`, `Order`).
    pub fn name(&self) -> String {
        short_type_name((self.type_name)())
    }

    /// Checks a payload against the type by the decoding rule. `Ok(Some(inner))` means it
    /// decoded only as a JSON string holding JSON: store `inner`, the value's own JSON, so
    /// status queries show the value. `Err` carries serde's message.
    pub fn check(&self, payload: Option<&str>) -> Result<Option<String>, String> {
        (self.check)(payload)
    }
}

fn check_as<T: DeserializeOwned>(payload: Option<&str>) -> Result<Option<String>, String> {
    decode_form::<T>(payload)
        .map(|(_, inner)| inner)
        .map_err(|e| e.to_string())
}

/// `alloc::vec::Vec<my_app::Order>` → `Vec<Order>`: each path keeps its last segment.
pub(crate) fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(""));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: String,
        items: Vec<u32>,
    }

    #[test]
    fn a_value_or_a_string_holding_it() {
        let v: Vec<String> = decode(Some(r#"["Paris","Rome"]"#)).unwrap();
        assert_eq!(v, ["Paris", "Rome"]);
        let v: Vec<String> = decode(Some(r#""[\"Paris\", \"Rome\"]""#)).unwrap();
        assert_eq!(v, ["Paris", "Rome"]);
        let o: Order = decode(Some(r#""{\"id\":\"A\",\"items\":[1,2]}""#)).unwrap();
        assert_eq!(o.items, [1, 2]);
        let n: i64 = decode(Some(r#""5""#)).unwrap();
        assert_eq!(n, 5);
        let none: Option<u32> = decode(None).unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn a_string_target_keeps_the_plain_meaning() {
        let s: String = decode(Some(r#""[1,2]""#)).unwrap();
        assert_eq!(s, "[1,2]");
        let s: String = decode(Some(r#""\"quoted\"""#)).unwrap();
        assert_eq!(s, "\"quoted\"");
        let v: serde_json::Value = decode(Some(r#""[1,2]""#)).unwrap();
        assert_eq!(v, serde_json::json!("[1,2]"));
    }

    #[test]
    fn errors_come_from_the_form_that_was_meant() {
        let e = decode::<Vec<String>>(Some(r#"{"cities": 5}"#)).unwrap_err();
        assert!(e.to_string().contains("expected a sequence"), "{e}");
        let e = decode::<Vec<String>>(Some(r#""[1,2]""#)).unwrap_err();
        assert!(e.to_string().contains("expected a string"), "{e}");
        let e = decode::<Vec<String>>(Some(r#""Paris""#)).unwrap_err();
        assert!(e.to_string().contains("expected a sequence"), "{e}");
    }

    #[test]
    fn deep_nesting_is_an_error_on_every_path() {
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let e = check_json(&deep).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
        assert!(decode::<serde_json::Value>(Some(&deep)).is_err());
        assert!(decode::<Vec<String>>(Some(&deep)).is_err());
        let quoted = serde_json::to_string(&deep).unwrap();
        assert!(
            decode::<serde_json::Value>(Some(&quoted)).is_ok(),
            "a plain string"
        );
        assert!(decode::<Vec<serde_json::Value>>(Some(&quoted)).is_err());
        let t = InputType::of::<Vec<serde_json::Value>>();
        assert!(t.check(Some(&deep)).is_err());
        assert!(t.check(Some(&quoted)).is_err());
        check_json(r#"{"a":[1,{"b":null}],"c":"x"}"#).unwrap();
        assert!(check_json("[1,").is_err());
        assert!(check_json("1 2").is_err());
    }

    #[test]
    fn input_types_check_and_name_themselves() {
        let t = InputType::of::<Vec<Order>>();
        assert_eq!(t.name(), "Vec<Order>");
        assert_eq!(t.check(Some(r#"[{"id":"a","items":[]}]"#)), Ok(None));
        assert_eq!(
            t.check(Some(r#""[{\"id\":\"a\",\"items\":[]}]""#)),
            Ok(Some(r#"[{"id":"a","items":[]}]"#.to_string()))
        );
        assert!(t.check(Some("[1,2,3]")).is_err());
        assert_eq!(
            InputType::of::<(String, std::collections::HashMap<String, u8>)>().name(),
            "(String, HashMap<String, u8>)"
        );
        assert_eq!(InputType::of::<()>().check(None), Ok(None));
        assert!(InputType::of::<()>().check(Some("5")).is_err());
    }
}
