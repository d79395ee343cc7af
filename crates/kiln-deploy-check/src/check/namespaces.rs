//! One overlay, one namespace, created by the overlay.

use std::collections::BTreeSet;

use serde_json::Value;

use super::objects::Objects;

pub(super) fn check_namespaces(docs: &[Value], o: &Objects, p: &mut Vec<String>) {
    let created: BTreeSet<String> = o
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let used: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"] != "Namespace")
        .map(|d| d["metadata"]["namespace"].as_str().unwrap_or("").to_owned())
        .collect();
    if used.len() != 1 {
        p.push(format!(
            "objects are spread over namespaces {used:?}; one overlay, one namespace"
        ));
    }
    for ns in &used {
        if ns.is_empty() {
            p.push("some objects have no namespace: set `namespace:` in the overlay".into());
        } else if !created.contains(ns) {
            p.push(format!(
                "namespace {ns} is used but the overlay does not create it"
            ));
        }
    }
}
