//! The identity provider: `oidc-provider` on loopback, one per test process, and one of a
//! test's own where it must be restarted or given another key.

use super::*;

/// The running identity provider and the key it signs with.
#[derive(Deserialize)]
pub struct Idp {
    pub issuer: String,
    pub kid: String,
    pub private_key_pem: String,
    pub public_key_pem: String,
    /// A key the IdP never published (for forged tokens).
    pub attacker_private_key_pem: String,
    pub attacker_jwk: Value,
}

/// An identity provider of one test's own, stopped with the test; it can be restarted on
/// the same address (same issuer) with another key.
pub struct OwnIdp {
    pub idp: Idp,
    port: u16,
    child: Option<Child>,
}

impl OwnIdp {
    /// Starts an IdP with a new key on a free port.
    pub fn start() -> Self {
        let (idp, child) = spawn_idp(0, None).unwrap_or_else(|e| panic!("{e}"));
        let port = idp
            .issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        Self {
            idp,
            port,
            child: Some(child),
        }
    }

    /// Stops it (as an outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again at the same issuer URL, signing with `key_pem` (a new key if `None`).
    pub fn restart(&mut self, key_pem: Option<&str>) {
        self.stop();
        let start = Instant::now();
        loop {
            // The port may linger for a moment after the kill.
            match spawn_idp(self.port, key_pem) {
                Ok((idp, child)) => {
                    self.idp = idp;
                    self.child = Some(child);
                    return;
                }
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "IdP did not restart: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Changes how the IdP answers (`/__test/set`, see `tests/partners/idp/idp.mjs`), e.g.
    /// `opaque_prefix=a_` or `jwks_padding=1048576`.
    pub async fn set(&self, query: &str) -> TestResult {
        reqwest::get(format!("{}/__test/set?{query}", self.idp.issuer))
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// How many introspection requests this IdP process has had.
    pub async fn introspections(&self) -> TestResult<u64> {
        let reply: Value = reqwest::get(format!("{}/__test/introspections", self.idp.issuer))
            .await?
            .json()
            .await?;
        Ok(reply["count"].as_u64().ok_or("no count")?)
    }

    /// How often the JWKS has been served since this IdP process started.
    pub async fn jwks_fetches(&self) -> TestResult<u64> {
        let reply: Value = reqwest::get(format!("{}/__test/jwks-fetches", self.idp.issuer))
            .await?
            .json()
            .await?;
        Ok(reply["count"].as_u64().ok_or("no count")?)
    }
}

impl Drop for OwnIdp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The identity provider's clients.
pub const CLIENTS: &str = r#"[
    {"client_id": "billing-service", "client_secret": "billing-secret", "scope": "workflows:trigger workflows:read"},
    {"client_id": "reporting-service", "client_secret": "reporting-secret", "scope": "workflows:read"},
    {"client_id": "stepgate", "client_secret": "stepgate-secret", "scope": "workflows:read"}
]"#;

/// The shared IdP: its process exits by itself when the test process is gone.
pub(super) fn start_idp() -> Idp {
    spawn_idp(0, None)
        .map(|(idp, _)| idp)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `oidc-provider` on `port` (0: any) and waits for its ready line.
/// How long an IdP may take to report that it listens; a start that hangs (seen once on a
/// loaded machine: node blocked at start-up, never listening) is killed and tried again.
const IDP_START_TIMEOUT: Duration = Duration::from_secs(20);
const IDP_START_ATTEMPTS: usize = 3;

fn spawn_idp(port: u16, key_pem: Option<&str>) -> Result<(Idp, Child), String> {
    let mut attempt = 1;
    loop {
        match spawn_idp_once(port, key_pem) {
            Err(e) if attempt < IDP_START_ATTEMPTS && e.contains("in time") => attempt += 1,
            result => return result,
        }
    }
}

fn spawn_idp_once(port: u16, key_pem: Option<&str>) -> Result<(Idp, Child), String> {
    let dir = root().join("tests/partners/idp");
    assert!(
        dir.join("node_modules").exists(),
        "oidc-provider is not installed: run scripts/setup-partners"
    );
    let mut command = Command::new("node");
    command
        .arg("idp.mjs")
        .current_dir(&dir)
        .env("IDP_PORT", port.to_string())
        .env("IDP_CLIENTS", CLIENTS)
        .env(
            "IDP_AUDIENCES",
            serde_json::json!([AUDIENCE, "https://other-service.local"]).to_string(),
        )
        .env(
            "IDP_OPAQUE_AUDIENCES",
            serde_json::json!([OPAQUE_AUDIENCE, "https://opaque-other.local"]).to_string(),
        )
        .env("IDP_PARENT_PID", std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(pem) = key_pem {
        command.env("IDP_KEY_PEM", pem);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the identity provider: {e}"))?;
    let stdout = child.stdout.take();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if let Some(stdout) = stdout {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let _ = sender.send(line);
    });
    let Ok(line) = receiver.recv_timeout(IDP_START_TIMEOUT) else {
        // Killing it ends the reader's read_line (end of file).
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "the identity provider did not start in time ({IDP_START_TIMEOUT:?})"
        ));
    };
    match serde_json::from_str(&line) {
        Ok(idp) => Ok((idp, child)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the identity provider did not start: {e}: {line:?}"
            ))
        }
    }
}

impl Idp {
    /// An access token by the client_credentials grant, as a microservice gets it.
    pub async fn token(&self, client_id: &str, secret: &str, scope: &str) -> TestResult<String> {
        self.token_for(client_id, secret, scope, AUDIENCE).await
    }

    pub async fn token_for(
        &self,
        client_id: &str,
        secret: &str,
        scope: &str,
        resource: &str,
    ) -> TestResult<String> {
        let reply: Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("resource", resource),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(reply["access_token"]
            .as_str()
            .ok_or("no access_token in the IdP's answer")?
            .to_owned())
    }

    /// reporting-service's token: a real client of the IdP that the default policy denies.
    pub async fn denied_token(&self) -> TestResult<String> {
        self.token("reporting-service", "reporting-secret", "workflows:read")
            .await
    }

    /// billing-service's token with the trigger scope: allowed by the default policy.
    pub async fn billing_token(&self) -> TestResult<String> {
        self.token("billing-service", "billing-secret", "workflows:trigger")
            .await
    }
}
