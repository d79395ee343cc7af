//! Every overlay under deploy/k8s/overlays renders and passes the structural checks; the checks
//! themselves catch the mistakes they are for.

use kiln_deploy_check::{check_documents, overlays, parse_documents, render, workspace_root};
use serde_json::Value;

fn rendered(name: &str) -> Vec<Value> {
    let root = workspace_root();
    let dir = root.join("deploy/k8s/overlays").join(name);
    let yaml = render(&dir).unwrap_or_else(|e| panic!("{e}"));
    parse_documents(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn find<'a>(docs: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    docs.iter_mut()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn problems_with(docs: &[Value], needle: &str) -> Vec<String> {
    check_documents(docs)
        .into_iter()
        .filter(|p| p.contains(needle))
        .collect()
}

#[test]
fn every_overlay_renders_and_passes_the_structural_checks() {
    let all = overlays(&workspace_root());
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["dev", "production"], "overlays found");
    for (name, dir) in &all {
        let yaml = render(dir).unwrap_or_else(|e| panic!("{e}"));
        let docs = parse_documents(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
        let problems = check_documents(&docs);
        assert!(
            problems.is_empty(),
            "overlay {name}:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn dev_runs_one_nats_node_and_r1_streams_production_three_and_r3() {
    for (name, want) in [("dev", 1), ("production", 3)] {
        let mut docs = rendered(name);
        let sts = find(&mut docs, "StatefulSet", "nats");
        assert_eq!(sts["spec"]["replicas"], want, "{name}");
        let config = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["data"].get("KILN_REPLICAS").is_some())
            .expect("kiln-config");
        assert_eq!(config["data"]["KILN_REPLICAS"], want.to_string(), "{name}");
    }
}

#[test]
fn replicas_that_disagree_with_the_statefulset_are_caught() {
    let mut docs = rendered("production");
    find(&mut docs, "StatefulSet", "nats")["spec"]["replicas"] = 5.into();
    let found = problems_with(&docs, "KILN_REPLICAS=3, but NATS has 5 nodes");
    assert!(!found.is_empty(), "{:#?}", check_documents(&docs));
    assert!(
        !problems_with(&docs, "routes").is_empty(),
        "routes of 3 nodes for 5 pods"
    );
}

#[test]
fn a_trigger_on_a_consumer_kiln_does_not_create_is_caught() {
    let mut docs = rendered("production");
    let so = find(&mut docs, "ScaledObject", "kiln-worker-gpu");
    so["spec"]["triggers"][0]["metadata"]["consumer"] = "workers-cuda".into();
    let found = problems_with(&docs, "consumer \"workers-cuda\"");
    assert_eq!(found.len(), 1, "{:#?}", check_documents(&docs));
}

#[test]
fn a_monitoring_endpoint_that_is_not_the_headless_service_is_caught() {
    let mut docs = rendered("production");
    let so = find(&mut docs, "ScaledObject", "kiln-worker-cpu");
    so["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"] =
        "nats-monitoring.kiln.svc.cluster.local:8222".into();
    assert_eq!(
        problems_with(&docs, "natsServerMonitoringEndpoint").len(),
        1
    );
}

#[test]
fn a_gpu_worker_without_gpus_or_toleration_is_caught() {
    let mut docs = rendered("production");
    let pod = &mut find(&mut docs, "Deployment", "kiln-worker-gpu")["spec"]["template"]["spec"];
    pod["tolerations"] = Value::Array(vec![]);
    pod["containers"][0]["resources"]["limits"]
        .as_object_mut()
        .expect("limits")
        .remove("nvidia.com/gpu");
    assert_eq!(problems_with(&docs, "tolerate the nvidia.com/gpu").len(), 1);
    assert_eq!(
        problems_with(&docs, "nvidia.com/gpu in its limits").len(),
        1
    );
}

#[test]
fn missing_limits_and_probes_are_caught() {
    let mut docs = rendered("dev");
    let c = &mut find(&mut docs, "Deployment", "kiln-scheduler")["spec"]["template"]["spec"]["containers"]
        [0];
    c.as_object_mut()
        .expect("container")
        .remove("readinessProbe");
    c["resources"]
        .as_object_mut()
        .expect("resources")
        .remove("limits");
    c["livenessProbe"]["httpGet"]["port"] = 8080.into();
    let problems = check_documents(&docs);
    for needle in [
        "no readiness probe",
        "no cpu in resources.limits",
        "no memory in resources.limits",
        "liveness probe must use the metrics port",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle}: {problems:#?}"
        );
    }
}

#[test]
fn a_service_that_selects_no_pods_is_caught() {
    let mut docs = rendered("production");
    find(&mut docs, "Service", "kiln-aggregator")["spec"]["selector"]["app.kubernetes.io/component"] =
        "aggregater".into();
    assert_eq!(
        problems_with(&docs, "Service kiln-aggregator selects no pods").len(),
        1
    );
    assert_eq!(
        problems_with(&docs, "exposes the aggregator's metrics").len(),
        1
    );
}

#[test]
fn a_field_outside_the_kubernetes_api_is_caught() {
    let mut docs = rendered("production");
    find(&mut docs, "Deployment", "kiln-worker-cpu")["spec"]["template"]["spec"]["containers"][0]
        ["livenessProbe"]["httpGet"]["paht"] = "/healthz".into();
    let found = problems_with(
        &docs,
        "livenessProbe.httpGet.paht is not part of the Kubernetes API",
    );
    assert_eq!(found.len(), 1, "{:#?}", check_documents(&docs));
}

#[test]
fn a_scaled_object_with_an_unquoted_threshold_is_caught() {
    let mut docs = rendered("production");
    find(&mut docs, "ScaledObject", "kiln-worker-cpu")["spec"]["triggers"][0]["metadata"]["lagThreshold"] =
        64.into();
    assert_eq!(problems_with(&docs, "is not a valid ScaledObject").len(), 1);
}

#[test]
fn production_with_nats_auth_passes_the_checks_and_gives_every_role_its_user() {
    let dir = workspace_root().join("deploy/k8s/examples/production-auth");
    let yaml = render(&dir).unwrap_or_else(|e| panic!("{e}"));
    let docs = parse_documents(&yaml).expect("parse");
    let problems = check_documents(&docs);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let mut users = Vec::new();
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
    {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
        {
            let env = c["env"].as_array().expect("env");
            let get = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
            let user = get("NATS_USER").expect("NATS_USER")["value"].clone();
            let password = get("NATS_PASSWORD").expect("NATS_PASSWORD");
            assert_eq!(
                password["valueFrom"]["secretKeyRef"]["name"],
                "kiln-nats-users"
            );
            assert_eq!(
                password["valueFrom"]["secretKeyRef"]["key"],
                format!("{}-password", user.as_str().expect("user"))
            );
            users.push((d["metadata"]["name"].clone(), user));
        }
    }
    users.sort_by_key(|(name, _)| name.to_string());
    let users: Vec<String> = users.iter().map(|(n, u)| format!("{n}={u}")).collect();
    assert_eq!(
        users,
        [
            "\"kiln-aggregator\"=\"aggregator\"",
            "\"kiln-init\"=\"admin\"",
            "\"kiln-scheduler\"=\"scheduler\"",
            "\"kiln-worker-cpu\"=\"worker\"",
            "\"kiln-worker-gpu\"=\"worker\"",
        ]
    );
    let sts = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("nats");
    let sources = &sts["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"];
    assert_eq!(sources[1]["secret"]["name"], "nats-auth");
}

#[test]
fn with_nats_auth_a_trigger_in_the_global_account_is_caught() {
    let dir = workspace_root().join("deploy/k8s/examples/production-auth");
    let yaml = render(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut docs = parse_documents(&yaml).expect("parse");
    find(&mut docs, "ScaledObject", "kiln-worker-gpu")["spec"]["triggers"][0]["metadata"]["account"] =
        "$G".into();
    assert_eq!(problems_with(&docs, "account must be KILN").len(), 1);
    let nats = find(&mut docs, "StatefulSet", "nats");
    let env = nats["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .expect("env");
    env.retain(|e| e["name"] != "KILN_SCHEDULER_PASSWORD");
    assert_eq!(
        problems_with(&docs, "get no KILN_SCHEDULER_PASSWORD").len(),
        1
    );
}

fn rendered_example(name: &str) -> Vec<Value> {
    let dir = workspace_root().join("deploy/k8s/examples").join(name);
    let yaml = render(&dir).unwrap_or_else(|e| panic!("{e}"));
    parse_documents(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn production_with_the_prometheus_operator_scrapes_every_role_and_carries_the_rules() {
    let docs = rendered_example("production-monitoring");
    let problems = check_documents(&docs);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let pm = docs
        .iter()
        .find(|d| d["kind"] == "PodMonitor")
        .expect("a PodMonitor");
    assert_eq!(pm["metadata"]["namespace"], "kiln");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    // A --serve-class worker's own class wins over the pod's.
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["honorLabels"], true);
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let rules = kiln_deploy_check::alert_rules(&workspace_root()).expect("the rule file");
    assert_eq!(rule["spec"], rules);
    let alerts: Vec<&str> = rules["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(
        alerts,
        [
            "KilnDeadLettersGrowing",
            "KilnBacklogWithoutWorkers",
            "KilnJobFailureRatioHigh",
            "KilnNatsDisconnected",
            "KilnRoleDown"
        ]
    );
}

#[test]
fn a_prometheus_rule_that_drifted_from_the_rule_file_is_caught() {
    let mut docs = rendered_example("production-monitoring");
    let rule = find(&mut docs, "PrometheusRule", "kiln");
    rule["spec"]["groups"][0]["rules"][0]["for"] = "30m".into();
    assert_eq!(
        problems_with(&docs, "differs from deploy/prometheus/rules/kiln.rules.yml").len(),
        1,
        "{:#?}",
        check_documents(&docs)
    );
}

#[test]
fn a_pod_monitor_on_the_wrong_port_or_job_is_caught() {
    let mut docs = rendered_example("production-monitoring");
    let pm = find(&mut docs, "PodMonitor", "kiln");
    pm["spec"]["podMetricsEndpoints"][0]["port"] = "http".into();
    pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"] = "kiln-pods".into();
    let problems = check_documents(&docs);
    for needle in [
        "scrapes port \"http\"",
        "no relabeling sets job=\"kiln\"",
        "Deployment kiln-aggregator: no PodMonitor scrapes",
    ] {
        assert_eq!(
            problems.iter().filter(|p| p.contains(needle)).count(),
            1,
            "{needle}: {problems:#?}"
        );
    }
    let mut docs = rendered_example("production-monitoring");
    find(&mut docs, "PodMonitor", "kiln")["spec"]["podMetricsEndpoint"] = Value::Null;
    assert_eq!(problems_with(&docs, "is not a valid PodMonitor").len(), 1);
}
