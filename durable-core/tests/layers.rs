//! The crate's modules form layers: no module uses another that uses it back, and the
//! replay engine knows nothing of stores. Read from the sources: every `crate::module`
//! path of a top-level module (its file, or every file of its directory) is an edge.

#[path = "../../tests/src/layers.rs"]
mod layers;

#[test]
fn modules_import_each_other_in_no_loop() {
    let graph = layers::module_graph(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    assert!(graph.len() > 10, "modules found: {:?}", graph.keys());
    if let Some(cycle) = layers::find_cycle(&graph) {
        panic!(
            "modules import each other in a loop: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn replay_imports_nothing_from_store() {
    let graph = layers::module_graph(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let replay = &graph["replay"];
    assert!(!replay.contains("store"), "replay uses: {replay:?}");
}

#[test]
fn a_loop_is_found_and_named() {
    let mut graph = layers::Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    graph.entry("d".into()).or_default().insert("a".into());
    let cycle = layers::find_cycle(&graph).expect("a loop");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    graph.get_mut("c").unwrap().clear();
    assert_eq!(layers::find_cycle(&graph), None);
}

#[test]
fn paths_are_read_from_code_not_comments() {
    let deps = layers::crate_paths(
        "use crate::{alpha, beta::Thing};\n// crate::gamma\nlet x = crate::delta::f(); /// crate::eps\n",
    );
    let mut deps: Vec<_> = deps.into_iter().collect();
    deps.sort();
    assert_eq!(deps, ["alpha", "beta", "delta"]);
}
