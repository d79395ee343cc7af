//! The structural checks of a rendered overlay.

use serde_json::Value;

// The documents as API types and what the checks ask of them; then one module per thing
// checked.
mod gpu;
mod monitoring;
mod namespaces;
mod nats;
mod objects;
mod scaling;
mod services;
mod workloads;

use self::gpu::check_gpu;
use self::monitoring::check_monitoring;
use self::namespaces::check_namespaces;
use self::nats::check_nats;
use self::objects::{typed_objects, workloads};
use self::scaling::check_keda;
use self::services::{check_pdbs, check_services};
use self::workloads::check_workloads;

/// The port every long-running kiln role serves /metrics, /healthz and /readyz on.
const METRICS_PORT: i32 = 9090;
const METRICS_PORT_NAME: &str = "metrics";

/// Split a multi-document YAML stream into JSON values (empty documents dropped).
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(yaml).enumerate() {
        let value = yaml_serde::Value::deserialize(doc)
            .map_err(|e| format!("document {i} is not YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value)
            .map_err(|e| format!("document {i} has no JSON form: {e}"))?;
        docs.push(json);
    }
    Ok(docs)
}

/// Parse and check a rendered overlay; returns every problem found (empty = fine).
pub fn check_yaml(yaml: &str) -> Vec<String> {
    match parse_documents(yaml) {
        Ok(docs) => check_documents(&docs),
        Err(e) => vec![e],
    }
}

/// Check parsed documents; returns every problem found (empty = fine).
pub fn check_documents(docs: &[Value]) -> Vec<String> {
    let mut p = Vec::new();
    let objects = typed_objects(docs, &mut p);
    let workloads = workloads(&objects);
    check_namespaces(docs, &objects, &mut p);
    check_workloads(&workloads, &objects, &mut p);
    check_services(&objects, &workloads, &mut p);
    check_pdbs(&objects, &workloads, &mut p);
    check_nats(&objects, &workloads, &mut p);
    check_keda(&objects, &workloads, &mut p);
    check_gpu(&workloads, &mut p);
    check_monitoring(&objects, &workloads, &mut p);
    p
}
