//! `kiln_build_info`: which kiln a role is, on every role's endpoint.

use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// kiln's version (the workspace's, which every kiln crate shares).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the build was made from, when the builder said so with `KILN_GIT_COMMIT`
/// at build time (kiln does not run git itself: the same sources build the same binary).
const COMMIT: Option<&str> = option_env!("KILN_GIT_COMMIT");

/// Register `kiln_build_info{version, role[, commit]}` = 1. `role` is the kiln subcommand
/// (`worker`, `aggregator`, `scheduler`).
pub fn register_build_info(registry: &mut Registry, role: &str) {
    let mut labels = vec![
        ("version".to_owned(), VERSION.to_owned()),
        ("role".to_owned(), role.to_owned()),
    ];
    if let Some(commit) = COMMIT.filter(|c| !c.is_empty()) {
        labels.push(("commit".to_owned(), commit.to_owned()));
    }
    registry.register(
        "kiln_build",
        "This kiln process: its version, role and (when built with KILN_GIT_COMMIT) commit",
        Info::new(labels),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_version_and_role() {
        let mut registry = Registry::default();
        register_build_info(&mut registry, "scheduler");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("kiln_build_info{"))
            .unwrap_or_else(|| panic!("no kiln_build_info in {text}"));
        assert!(line.contains(&format!("version=\"{VERSION}\"")), "{line}");
        assert!(line.contains("role=\"scheduler\""), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
    }
}
