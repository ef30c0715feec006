//! Attribute macros for durable (first placeholder; replaced below).
use proc_macro::TokenStream;
/// `#[activity]`
#[proc_macro_attribute]
pub fn activity(_a: TokenStream, item: TokenStream) -> TokenStream { item }
/// `#[orchestrator]`
#[proc_macro_attribute]
pub fn orchestrator(_a: TokenStream, item: TokenStream) -> TokenStream { item }
