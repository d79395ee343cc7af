//! The NATS StatefulSet: its governing Service, storage, cluster routes and configuration
//! (validated by nats-server itself), and the kiln processes that connect to it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;

use super::objects::{
    Objects, Workload, container_env, find_config_map, image_name, is_kiln, kiln_role, selects,
    template_labels,
};

/// The NATS StatefulSet, its governing Service and its configuration.
pub(super) struct Nats<'a> {
    sts: &'a StatefulSet,
    replicas: i32,
    pub(super) service: String,
    pub(super) namespace: String,
    conf: String,
    auth: Option<String>,
    pub(super) monitor_port: Option<i32>,
    cluster_port: Option<i32>,
    /// auth.conf comes from a Secret (the nats-auth component): users in the account KILN.
    pub(super) auth_from_secret: bool,
    /// Variables set in the NATS container's environment.
    env: BTreeSet<String>,
}

/// The account of nats/secure/secure.conf's users, which the nats-auth component uses.
pub(super) const AUTH_ACCOUNT: &str = "KILN";

pub(super) fn nats<'a>(o: &'a Objects, p: &mut Vec<String>) -> Option<Nats<'a>> {
    let sts = o.stateful_sets.iter().find(|s| {
        s.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .is_some_and(|pod| {
                pod.containers
                    .iter()
                    .any(|c| c.image.as_deref().is_some_and(|i| image_name(i) == "nats"))
            })
    });
    let Some(sts) = sts else {
        p.push("no NATS StatefulSet".into());
        return None;
    };
    let spec = sts.spec.as_ref()?;
    let pod = spec.template.spec.as_ref()?;
    let container = pod.containers.iter().find(|c| c.name == "nats")?;
    let port = |name: &str| {
        container
            .ports
            .iter()
            .flatten()
            .find(|port| port.name.as_deref() == Some(name))
            .map(|port| port.container_port)
    };
    // The ConfigMap mounted as the config directory, directly or in a projected volume.
    let config_volume = pod.volumes.iter().flatten().find(|v| v.name == "config");
    let cm_name = config_volume.and_then(|v| {
        v.config_map.as_ref().map(|cm| cm.name.clone()).or_else(|| {
            v.projected.as_ref().and_then(|proj| {
                proj.sources
                    .iter()
                    .flatten()
                    .find_map(|s| s.config_map.as_ref().map(|cm| cm.name.clone()))
            })
        })
    });
    let auth_from_secret = config_volume
        .and_then(|v| v.projected.as_ref())
        .is_some_and(|proj| proj.sources.iter().flatten().any(|s| s.secret.is_some()));
    let env = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    let Some(cm) = cm_name.and_then(|n| find_config_map(o, &n, &sts.metadata.namespace)) else {
        p.push("the NATS StatefulSet mounts no ConfigMap as its `config` volume".into());
        return None;
    };
    let data = cm.data.clone().unwrap_or_default();
    let Some(conf) = data.get("nats.conf").cloned() else {
        p.push("the NATS ConfigMap has no nats.conf".into());
        return None;
    };
    Some(Nats {
        sts,
        replicas: spec.replicas.unwrap_or(1),
        service: spec.service_name.clone().unwrap_or_default(),
        namespace: sts.metadata.namespace.clone().unwrap_or_default(),
        conf,
        auth: data.get("auth.conf").cloned(),
        monitor_port: port("monitor"),
        cluster_port: port("cluster"),
        auth_from_secret,
        env,
    })
}

/// The configuration's lines without comments.
fn conf_lines(conf: &str) -> Vec<&str> {
    conf.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

pub(super) fn check_nats(o: &Objects, workloads: &[Workload<'_>], p: &mut Vec<String>) {
    let Some(n) = nats(o, p) else { return };
    let lines = conf_lines(&n.conf);
    let sts_name = n.sts.metadata.name.clone().unwrap_or_default();
    check_governing_service(o, &n, &sts_name, p);
    check_server(&n, &sts_name, &lines, p);
    check_cluster(&n, &sts_name, &lines, p);
    // The configuration is valid for nats-server itself.
    validate_with_nats_server(&n, &sts_name, p);
    check_clients(o, workloads, &n, p);
}

/// The governing Service is headless and publishes pods before they are ready.
fn check_governing_service(o: &Objects, n: &Nats<'_>, sts_name: &str, p: &mut Vec<String>) {
    match o
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(&n.service))
    {
        None => p.push(format!(
            "StatefulSet {sts_name} names a missing Service {}",
            n.service
        )),
        Some(svc) => {
            let spec = svc.spec.clone().unwrap_or_default();
            if spec.cluster_ip.as_deref() != Some("None") {
                p.push(format!(
                    "Service {} must be headless (clusterIP: None)",
                    n.service
                ));
            }
            if spec.publish_not_ready_addresses != Some(true) && n.replicas > 1 {
                p.push(format!(
                    "Service {} must publish not-ready addresses: the routes need them before \
                     JetStream can make any pod ready",
                    n.service
                ));
            }
        }
    }
}

/// Each server keeps JetStream on a volume of its own, named after its pod.
fn check_server(n: &Nats<'_>, sts_name: &str, lines: &[&str], p: &mut Vec<String>) {
    if n.sts
        .spec
        .as_ref()
        .is_none_or(|s| s.volume_claim_templates.is_none())
    {
        p.push(format!(
            "StatefulSet {sts_name} keeps JetStream on no PersistentVolumeClaim"
        ));
    }
    if !lines
        .iter()
        .any(|l| l.replace(' ', "") == "server_name:$POD_NAME")
    {
        p.push("nats.conf must set server_name: $POD_NAME (KEDA finds leaders by it)".into());
    }
    if !lines.iter().any(|l| l.starts_with("store_dir")) {
        p.push("nats.conf enables no JetStream store_dir".into());
    }
}

/// Cluster routes: one per pod under the headless Service, or no cluster for one node.
fn check_cluster(n: &Nats<'_>, sts_name: &str, lines: &[&str], p: &mut Vec<String>) {
    let clustered = lines.iter().any(|l| l.starts_with("cluster"));
    let routes: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.starts_with("nats://") || l.starts_with("nats-route://"))
        .map(|l| l.trim_end_matches(',').to_owned())
        .collect();
    if n.replicas > 1 {
        let cluster_port = n.cluster_port.unwrap_or(6222);
        let want: BTreeSet<String> = (0..n.replicas)
            .map(|i| format!("nats://{sts_name}-{i}.{}:{cluster_port}", n.service))
            .collect();
        if !clustered || routes != want {
            p.push(format!(
                "StatefulSet {sts_name} has {} replicas, so nats.conf needs a cluster block \
                 with the routes {want:?}; it has {routes:?}",
                n.replicas
            ));
        }
        if !lines
            .iter()
            .any(|l| l.replace(' ', "") == "no_advertise:true")
        {
            p.push(
                "clustered nats.conf must set no_advertise: true (KEDA's scaler then finds \
                    consumer leaders through the route names)"
                    .into(),
            );
        }
    } else if clustered {
        p.push("a single NATS node must not have a cluster block (it would wait for peers)".into());
    }
}

/// Every kiln process connects as a user NATS knows (with the nats-auth component), uses the
/// StatefulSet's size as its stream replicas, and names a Service of the NATS pods; and
/// `kiln init` (which creates the streams) is among them.
fn check_clients(o: &Objects, workloads: &[Workload<'_>], n: &Nats<'_>, p: &mut Vec<String>) {
    let mut init_seen = false;
    for w in workloads {
        for c in w.pod.containers.iter().filter(|c| is_kiln(c)) {
            let env = container_env(c, o, &w.namespace);
            if kiln_role(c) == Some("init") {
                init_seen = true;
            }
            let what = format!("{} {}", w.kind, w.name);
            if n.auth_from_secret {
                check_client_user(&what, &env, n, p);
            }
            check_client_replicas(&what, &env, n, p);
            check_client_url(&what, &env, o, n, p);
        }
    }
    if !init_seen {
        p.push("no `kiln init` Job creates the streams and consumers".into());
    }
}

/// With users in a Secret: a user and password, the password one the NATS pods get.
fn check_client_user(
    what: &str,
    env: &BTreeMap<String, String>,
    n: &Nats<'_>,
    p: &mut Vec<String>,
) {
    let user = env.get("NATS_USER").cloned().unwrap_or_default();
    let password_var = format!("KILN_{}_PASSWORD", user.to_uppercase());
    if user.is_empty() || !env.contains_key("NATS_PASSWORD") {
        p.push(format!(
            "{what}: NATS requires users, but this role has no NATS_USER and NATS_PASSWORD"
        ));
    } else if !n.env.contains(&password_var) {
        p.push(format!(
            "{what}: connects as {user}, but the NATS pods get no {password_var}"
        ));
    }
}

fn check_client_replicas(
    what: &str,
    env: &BTreeMap<String, String>,
    n: &Nats<'_>,
    p: &mut Vec<String>,
) {
    let replicas = env
        .get("KILN_REPLICAS")
        .cloned()
        .unwrap_or_else(|| "1".into());
    if replicas != n.replicas.to_string() {
        p.push(format!(
            "{what}: KILN_REPLICAS={replicas}, but NATS has {} nodes; streams would be \
             created with another replica count",
            n.replicas
        ));
    }
}

/// `NATS_URL` names a Service on port 4222 that selects the NATS pods.
fn check_client_url(
    what: &str,
    env: &BTreeMap<String, String>,
    o: &Objects,
    n: &Nats<'_>,
    p: &mut Vec<String>,
) {
    let url = env.get("NATS_URL").cloned().unwrap_or_default();
    let client_service = url
        .trim_start_matches("nats://")
        .split([':', '.'])
        .next()
        .unwrap_or_default()
        .to_owned();
    if !o.services.iter().any(|s| {
        s.metadata.name.as_deref() == Some(client_service.as_str())
            && s.spec.as_ref().is_some_and(|spec| {
                spec.ports.iter().flatten().any(|port| port.port == 4222)
                    && spec.selector.as_ref().is_some_and(|sel| {
                        n.sts.spec.as_ref().is_some_and(|sts| {
                            selects(sel, &template_labels(&sts.template.metadata))
                        })
                    })
            })
    }) {
        p.push(format!(
            "{what}: NATS_URL {url} does not name a Service of the NATS pods on port 4222"
        ));
    }
}

fn validate_with_nats_server(n: &Nats<'_>, sts_name: &str, p: &mut Vec<String>) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            p.push(format!("cannot create a temporary directory: {e}"));
            return;
        }
    };
    let conf = dir.path().join("nats.conf");
    let written = std::fs::write(&conf, &n.conf).and_then(|()| {
        std::fs::write(
            dir.path().join("auth.conf"),
            n.auth.as_deref().unwrap_or("# auth from a Secret\n"),
        )
    });
    if let Err(e) = written {
        p.push(format!("cannot write the NATS configuration: {e}"));
        return;
    }
    let out = std::process::Command::new(kiln_testkit::nats_server_bin())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .env("POD_NAME", format!("{sts_name}-0"))
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => p.push(format!(
            "nats-server rejects the rendered nats.conf: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => p.push(format!("cannot run nats-server -t: {e}")),
    }
}
