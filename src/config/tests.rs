use jsonwebtoken::Algorithm;

use super::*;

pub(crate) const VALID: &str = r#"
    [redis]
    url = "redis://127.0.0.1:6379"
    [aws]
    region = "us-east-1"
    [audit]
    signing_key = "audit.key"
    [[issuers]]
    issuer = "http://127.0.0.1:4444"
    audiences = ["https://stepgate.local"]
    [workflows.orders]
    state_machine_arn = "arn:aws:states:us-east-1:123456789012:stateMachine:orders"
    [[workflows.orders.allow]]
    clients = ["billing-service"]
    scopes = ["workflows:trigger"]
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Config::from_toml(text) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

fn keys(text: &str) -> Vec<String> {
    problems(text).into_iter().map(|p| p.key).collect()
}

#[test]
fn a_valid_file_loads_with_defaults() -> Result<(), ConfigError> {
    let config = Config::from_toml(VALID)?;
    assert_eq!(config.server.max_body_bytes, 256 * 1024);
    assert_eq!(config.issuers[0].algorithms, vec![Algorithm::RS256]);
    assert_eq!(config.redis.key_prefix, "stepgate");
    Ok(())
}

#[test]
fn problems_name_their_key() {
    let text = VALID
        .replace("stateMachine:orders", "function:orders")
        .replace("redis://", "http://")
        .replace(r#"clients = ["billing-service"]"#, "")
        .replace(r#"scopes = ["workflows:trigger"]"#, "");
    let mut found = keys(&text);
    found.sort();
    assert_eq!(
        found,
        vec![
            "redis.url",
            "workflows.orders.allow[0]",
            "workflows.orders.state_machine_arn",
        ]
    );
}

#[test]
fn every_policy_section_refuses_a_rule_without_a_condition() -> Result<(), ConfigError> {
    let config = Config::from_toml(VALID)?;
    // Every section the configuration knows, whatever is added later.
    let sections: Vec<(String, usize)> = config
        .policy_sections()
        .into_iter()
        .map(|(key, rules)| (key, rules.len()))
        .collect();
    assert!(sections.len() >= 6, "{sections:?}");
    for (section, existing) in sections {
        for empty in ["", "scopes = []\nclients = []\nsubjects = []\nclaims = []"] {
            let text = format!("{VALID}\n[[{section}]]\n{empty}\n");
            let found = problems(&text);
            let key = format!("{section}[{existing}]");
            assert!(
                found
                    .iter()
                    .any(|p| p.key == key && p.message.contains("at least one condition")),
                "{key} with {empty:?}: {found:?}"
            );
        }
        let issuer_only = format!("{VALID}\n[[{section}]]\nissuer = \"http://127.0.0.1:4444\"\n");
        assert!(
            keys(&issuer_only).contains(&format!("{section}[{existing}]")),
            "an issuer alone matches everyone of it: {section}"
        );
    }
    Ok(())
}

#[test]
fn every_unknown_or_mistyped_key_is_listed_with_its_line() {
    let text = VALID
        .replace("[aws]", "[aws]\nregoin = \"x\"")
        .replace("state_machine_arn =", "checkpoint = 5\nstate_machine_arn =")
        + "[server]\nmax_body_bytes = -5\n";
    let found = problems(&text);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
    let expect = [
        ("aws.regoin", line_of("regoin")),
        ("workflows.orders.checkpoint", line_of("checkpoint = 5")),
        ("server.max_body_bytes", line_of("max_body_bytes = -5")),
    ];
    for (key, line) in expect {
        let problem = found.iter().find(|p| p.key == key);
        assert_eq!(problem.and_then(|p| p.line), line, "{key}: {found:?}");
    }
    let said = ConfigError::Invalid(found).to_string();
    assert!(!said.contains("default.") && !said.contains("``"), "{said}");
    assert!(
        said.contains("expected a whole number (0 or more), found -5"),
        "{said}"
    );
}

#[test]
fn an_otlp_endpoint_needs_a_build_that_exports() {
    let text = format!("{VALID}\n[log]\notlp_endpoint = \"http://collector:4318\"\n");
    if cfg!(feature = "otlp") {
        assert!(Config::from_toml(&text).is_ok());
        assert_eq!(
            keys(&text.replace("http://collector:4318", "collector")),
            vec!["log.otlp_endpoint"]
        );
    } else {
        assert_eq!(keys(&text), vec!["log.otlp_endpoint"]);
    }
}

#[test]
fn symmetric_algorithms_are_refused() {
    let text = VALID.replace(
        r#"audiences = ["https://stepgate.local"]"#,
        "audiences = [\"a\"]\nalgorithms = [\"HS256\"]",
    );
    assert_eq!(keys(&text), vec!["issuers[0].algorithms"]);
}

#[test]
fn unsafe_workflow_names_are_refused() {
    let text = VALID
        .replace("[workflows.orders]", "[workflows.\"../x\"]")
        .replace("workflows.orders.allow", "workflows.\"../x\".allow");
    assert_eq!(keys(&text), vec!["workflows.../x"]);
}

#[test]
fn a_role_must_be_an_iam_role_arn() {
    let with_role = |arn: &str| {
        VALID.replace(
            "state_machine_arn = \"arn:aws:states:us-east-1:123456789012:stateMachine:orders\"",
            &format!(
                "state_machine_arn = \"arn:aws:states:us-east-1:123456789012:stateMachine:orders\"\nrole_arn = \"{arn}\""
            ),
        )
    };
    assert!(
        Config::from_toml(&with_role("arn:aws:iam::123456789012:role/stepgate-orders")).is_ok()
    );
    assert!(Config::from_toml(&with_role("arn:aws:iam::123456789012:role/path/to/r")).is_ok());
    for bad in [
        "arn:aws:iam::123456789012:user/someone",
        "arn:aws:iam::12345:role/r",
        "arn:aws:iam::123456789012:role/",
        "stepgate-orders",
    ] {
        assert_eq!(
            keys(&with_role(bad)),
            vec!["workflows.orders.role_arn"],
            "{bad}"
        );
    }
}

#[test]
fn claim_idle_must_outlast_a_delivery() {
    let text = format!("{VALID}\n[worker]\ncall_timeout_ms = 10000\nclaim_idle_ms = 5000\n");
    assert_eq!(keys(&text), vec!["worker.claim_idle_ms"]);
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let text = VALID.replace("[aws]", "[aws]\nregoin = \"x\"");
    let err = Config::from_toml(&text)
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("regoin"), "{err}");
}

#[test]
fn secrets_do_not_show_in_debug_output() -> Result<(), ConfigError> {
    let config =
        Config::from_toml(&VALID.replace("redis://127.0.0.1", "redis://:hunter2@127.0.0.1"))?;
    assert!(!format!("{config:?}").contains("hunter2"));
    Ok(())
}

#[test]
fn a_syntax_error_names_its_line_but_never_quotes_it() {
    let text = VALID.replacen("[redis]", "[redis]\nurl = \"redis://:hunter2@h\n", 1);
    let message = match Config::from_toml(&text) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a string without its closing quote was accepted"),
    };
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("line"), "{message}");
}

#[test]
fn a_finished_status_ttl_left_out_keeps_files_written_before_it_valid() -> Result<(), ConfigError> {
    let with = |server: &str| VALID.replace("[redis]", &format!("[server]\n{server}\n[redis]"));
    let day = Duration::from_secs(86_400);
    assert_eq!(Config::from_toml(VALID)?.server.finished_status_ttl(), day);
    // Shorter statuses than a day, longer idempotency keys than a day: both loaded before.
    let short = Config::from_toml(&with(
        "status_ttl_seconds = 3600\nidempotency_ttl_seconds = 600",
    ))?;
    assert_eq!(
        short.server.finished_status_ttl(),
        Duration::from_secs(3_600)
    );
    let long = Config::from_toml(&with("idempotency_ttl_seconds = 172800"))?;
    assert_eq!(long.server.finished_status_ttl(), 2 * day);
    // Set, it is held to both.
    assert_eq!(
        keys(&with("finished_status_ttl_seconds = 60")),
        ["server.idempotency_ttl_seconds"]
    );
    Ok(())
}

#[test]
fn an_s3_sink_names_each_mistake_by_its_key() {
    let good = format!("{VALID}\n[audit.s3]\nbucket = \"acme-audit\"\n");
    let config = Config::from_toml(&good).unwrap();
    let s3 = config.audit.s3.unwrap();
    assert_eq!(s3.prefix, "stepgate-audit/");
    assert_eq!((s3.segment_records, s3.segment_age.as_secs()), (10_000, 60));
    let bad = format!(
        "{VALID}\n[audit.s3]\nbucket = \"Acme_Audit\"\nprefix = \"/logs\"\nobject_lock_days = 0\n\
         segment_records = 0\nsegment_seconds = 0\nendpoint_url = \"minio\"\n"
    );
    assert_eq!(
        keys(&bad),
        vec![
            "audit.s3.bucket",
            "audit.s3.prefix",
            "audit.s3.object_lock_days",
            "audit.s3.segment_records",
            "audit.s3.segment_seconds",
            "audit.s3.endpoint_url",
        ]
    );
    let off = format!(
        "{VALID}\n[audit.files]\nenabled = false\nmax_unexported_records = 1000\n\
         [audit.s3]\nbucket = \"acme-audit\"\nsegment_records = 600\n"
    );
    assert_eq!(keys(&off), vec!["audit.s3", "audit.s3.segment_records"]);
}
