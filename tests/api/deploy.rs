//! The Kubernetes example (`deploy/kubernetes`) hangs together: two replicas, probes on the
//! real routes, non-root as the image, a disruption budget over the same pods, a
//! configuration `stepgate check-config` accepts, and a grace period longer than shutdown.

use std::process::Command;

use serde_json::Value;

use crate::support::{TestResult, root};

/// Every manifest document, as JSON (parsed with PyYAML from the test venv).
fn manifests() -> TestResult<Vec<Value>> {
    let output = Command::new(root().join(".venv/bin/python"))
        .args([
            "-c",
            "import json, sys, glob, yaml\n\
             docs = [d for f in sorted(glob.glob(sys.argv[1] + '/*.yaml')) for d in yaml.safe_load_all(open(f))]\n\
             print(json.dumps(docs))",
        ])
        .arg(root().join("deploy/kubernetes"))
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> TestResult<&'a Value> {
    Ok(docs
        .iter()
        .find(|d| d["kind"] == kind)
        .ok_or_else(|| format!("no {kind}"))?)
}

#[test]
fn the_kubernetes_example_hangs_together() -> TestResult {
    let docs = manifests()?;
    let deployment = kind(&docs, "Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // Probes and scrapes go to the operations port, which the Service does not expose.
    let ops_port = container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "ops"))
        .and_then(|p| p["containerPort"].as_u64())
        .ok_or("no ops port")?;
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "ops", "{probe}");
    }
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        ops_port.to_string()
    );
    let service_ports = &kind(&docs, "Service")?["spec"]["ports"];
    assert!(
        service_ports
            .as_array()
            .is_some_and(|ports| ports.iter().all(|p| p["targetPort"] != "ops")),
        "the Service exposes the operations port: {service_ports}"
    );
    let spec: Value = serde_json::from_slice(&std::fs::read(root().join("openapi/openapi.json"))?)?;
    for path in ["/readyz", "/healthz", "/metrics"] {
        assert!(spec["paths"].get(path).is_some(), "{path} is a route");
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile"))?;
    let user = pod["securityContext"]["runAsUser"].as_u64().unwrap_or(0);
    assert!(
        dockerfile.contains(&format!("USER {user}:")),
        "the image's user is {user}"
    );

    let pdb = kind(&docs, "PodDisruptionBudget")?;
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
    assert_eq!(
        kind(&docs, "Service")?["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // The configuration is valid, and its key lives where the Secret is mounted.
    let config = kind(&docs, "ConfigMap")?["data"]["stepgate.toml"]
        .as_str()
        .ok_or("no stepgate.toml")?
        .to_owned();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("stepgate.toml");
    std::fs::write(&path, &config)?;
    // check-config reads the key as serve would: here it is mounted elsewhere.
    let key = dir.path().join("audit.key");
    stepgate::audit::AuditSigner::generate().write_pair(&key)?;
    let checked = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        // Never the instance metadata service (a non-loopback address) from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["check-config", "--config"])
        .arg(&path)
        .env("STEPGATE_REDIS__URL", "redis://redis.example:6379")
        .env("STEPGATE_AUDIT__SIGNING_KEY", &key)
        .output()?;
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let parsed = stepgate::config::Config::from_toml(&config)?;
    let key_mount = container["volumeMounts"]
        .as_array()
        .and_then(|mounts| mounts.iter().find(|m| m["name"] == "audit-key"))
        .and_then(|m| m["mountPath"].as_str())
        .ok_or("no audit-key mount")?;
    assert!(parsed.audit.signing_key.starts_with(key_mount));
    assert_eq!(
        parsed.server.ops_listen.map(|addr| u64::from(addr.port())),
        Some(ops_port),
        "the configuration's ops_listen is the container's ops port"
    );
    // Stop admitting, finish the longest call, flush: all before the kubelet kills.
    let grace_ms = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(0) * 1000;
    assert!(
        grace_ms > (parsed.server.shutdown_grace + parsed.worker.call_timeout).as_millis() as u64
    );
    Ok(())
}

/// The image's HEALTHCHECK: `stepgate healthcheck` exits 0 against a live server, 1 when
/// nothing answers.
#[tokio::test]
async fn the_binary_probes_a_server() -> TestResult {
    let app = crate::support::spawn_app().await?;
    // Not std's Command: the server runs on this test's (single) runtime thread.
    let probe = |url: String| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
            // Never the instance metadata service (a non-loopback address) from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["healthcheck", "--url", &url])
            .output()
    };
    assert!(probe(app.url("/healthz")).await?.status.success());
    assert!(probe(app.url("/readyz")).await?.status.success());
    let port = crate::support::free_port();
    let down = probe(format!("http://127.0.0.1:{port}/healthz")).await?;
    assert_eq!(down.status.code(), Some(1));
    Ok(())
}

/// The probe reads only `[server]`: a key file gone unreadable while the process runs (on
/// what it loaded at start) must not make a live gateway look dead and get it restarted.
#[tokio::test]
async fn the_probe_reads_only_where_the_server_listens() -> TestResult {
    let app = crate::support::spawn_app().await?;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Where the running app listens, and a signing key nobody can read.
    let probed = app
        .base_config()
        .set("server.listen", addr)
        .set("audit.signing_key", "/nonexistent/audit.key")
        .render();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("probe.toml");
    std::fs::write(&config, probed)?;
    let probe = probe_with(&config).await?;
    assert!(probe.status.success(), "{probe:?}");
    Ok(())
}

/// A file that does not parse fails the probe (never a silent probe of a default address),
/// and its error does not quote the broken line.
#[tokio::test]
async fn the_probe_of_a_broken_file_fails_without_quoting_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:1\"\n[redis]\nurl = \"redis://:hunter2@h\n",
    )?;
    let probe = probe_with(&config).await?;
    assert!(!probe.status.success());
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert!(stderr.contains("line"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    Ok(())
}

/// `stepgate healthcheck --config <config>`, from this test's runtime (the server runs on it).
async fn probe_with(config: &std::path::Path) -> std::io::Result<std::process::Output> {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
        // Never the instance metadata service (a non-loopback address) from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["healthcheck", "--config"])
        .arg(config)
        .output()
        .await
}
