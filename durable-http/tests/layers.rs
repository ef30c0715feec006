//! The crate's modules form layers: no module uses another that uses it back (read from
//! the sources: every `crate::module` path of a top-level module is an edge).

#[path = "../../tests/src/layers.rs"]
mod layers;

#[test]
fn modules_import_each_other_in_no_loop() {
    let graph = layers::module_graph(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    assert!(graph.len() > 5, "modules found: {:?}", graph.keys());
    if let Some(cycle) = layers::find_cycle(&graph) {
        panic!(
            "modules import each other in a loop: {}",
            cycle.join(" -> ")
        );
    }
}
