//! The deploy files' configs are real configs: the TOML in each Kubernetes ConfigMap parses and validates as
//! the server would load it (the manifests themselves are checked by kubernetes-validate in CI).

use forkpool::config::Config;

/// The `forkpool.toml: |` block of a ConfigMap, dedented.
fn embedded_toml(manifest: &str) -> String {
    let mut lines = manifest.lines().skip_while(|l| !l.trim_start().starts_with("forkpool.toml: |")).skip(1);
    let first = lines.next().expect("a forkpool.toml block");
    let indent = first.len() - first.trim_start().len();
    std::iter::once(first)
        .chain(lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent))
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_configmap_holds_a_valid_config() {
    for file in ["deploy/kubernetes/configmap.yaml", "deploy/kubernetes/isolated/configmap.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let manifest = std::fs::read_to_string(&path).expect("read the manifest");
        let toml = embedded_toml(&manifest);
        let config = Config::parse(&toml).unwrap_or_else(|e| panic!("{file}: {e}\n{toml}"));
        config.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!config.jobs.is_empty(), "{file}: no jobs");
    }
}
