//! The docs page in a real browser: headless Chromium (driven by playwright-core) opens
//! `/docs` from stepgate itself (offline: nothing else is fetched), sees every operation of
//! the served document, and the "Authorize" dialog offers the configured issuer's OAuth 2.0
//! client-credentials flow. A screenshot is kept in `target/test-artifacts/docs.png`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{TestResult, partners, root, spawn_app};

#[tokio::test]
async fn the_docs_page_lists_every_operation_and_offers_client_credentials() -> TestResult {
    let app = spawn_app().await?;
    let served: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let screenshot = artifacts.join("docs.png");
    let _ = std::fs::remove_file(&screenshot);
    // Not std's Command: stepgate runs on this test's runtime thread.
    let output = tokio::process::Command::new("node")
        .arg(root().join("tests/partners/browser/docs_check.mjs"))
        .arg(&app.base)
        .arg(&screenshot)
        .output()
        .await?;
    assert!(
        output.status.success(),
        "the browser check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout)?;

    let shown: BTreeSet<(String, String)> = seen["operations"]
        .as_array()
        .ok_or("no operations")?
        .iter()
        .map(|op| {
            (
                op["method"].as_str().unwrap_or_default().to_owned(),
                op["path"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let documented: BTreeSet<(String, String)> = served["paths"]
        .as_object()
        .ok_or("no paths")?
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    assert_eq!(shown, documented, "every operation on the page");

    let authorize = seen["authorize"].as_str().unwrap_or_default();
    let token_url =
        served["components"]["securitySchemes"]["client_credentials"]["flows"]["clientCredentials"]
            ["tokenUrl"]
            .as_str()
            .ok_or("no client-credentials scheme")?;
    assert!(token_url.starts_with(&partners().idp.issuer));
    for expected in [
        "client_credentials",
        "clientCredentials",
        token_url,
        "workflows:trigger",
        "bearer",
    ] {
        assert!(
            authorize.contains(expected),
            "{expected:?} in the Authorize dialog:\n{authorize}"
        );
    }
    assert_eq!(
        seen["failed"],
        serde_json::json!([]),
        "every asset loaded from stepgate"
    );
    assert!(
        std::fs::metadata(&screenshot)?.len() > 10_000,
        "a screenshot was saved"
    );
    Ok(())
}

/// ARCHITECTURE.md names modules by path; every path it names exists (keep the map true when
/// a module moves).
#[test]
fn every_path_the_architecture_map_names_exists() -> TestResult {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md"))?;
    let named: Vec<&str> = map
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| {
            ["src/", "tests/", "migrations/", "openapi/"]
                .iter()
                .any(|dir| quoted.starts_with(dir))
        })
        .collect();
    assert!(named.len() > 40, "the map names its modules: {named:?}");
    let missing: Vec<&&str> = named
        .iter()
        .filter(|path| !root().join(path).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what does not exist: {missing:?}"
    );
    Ok(())
}
