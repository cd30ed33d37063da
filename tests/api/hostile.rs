//! A client with no token, or a token and bad intent: slow heads, trickled bodies, idle and
//! surplus connections, made-up methods and paths. Each test is what an attacker would try;
//! each asserts what reaches the client (status, close) and what the gateway keeps.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    RedisServer, TestApp, TestResult, partners, spawn_app, spawn_app_with, spawn_app_without_drain,
};

/// An app with `server` (an object) among its `[server]` settings.
async fn app_with_server(server: serde_json::Value) -> TestResult<TestApp> {
    spawn_app_with(RedisServer::start(), |config| {
        let serde_json::Value::Object(server) = server else {
            panic!("settings of [server] are an object, not {server}")
        };
        server.into_iter().fold(config, |config, (key, value)| {
            config.set(&format!("server.{key}"), value)
        })
    })
    .await
}

async fn connect(app: &TestApp) -> TestResult<TcpStream> {
    let addr = app.base.trim_start_matches("http://");
    Ok(TcpStream::connect(addr).await?)
}

/// Reads until the peer closes (or `limit` passes); returns what arrived and when it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (received, None),
            Ok(Ok(0) | Err(_)) => return (received, Some(started.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// One `GET /healthz` on a kept-alive connection; returns the status line.
async fn get_healthz(stream: &mut TcpStream) -> TestResult<String> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // The answer is small and has a Content-Length: read until the body is in.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_half_sent_head_is_closed_after_the_header_timeout() -> TestResult {
    let app = app_with_server(json!({"header_read_timeout_ms": 1000})).await?;
    let mut stream = connect(&app).await?;
    stream
        .write_all(b"POST /v1/workflows/orders/executions HTTP/1.1\r\nHost: x\r\nX-a: ")
        .await?;
    // One byte every 200 ms keeps bytes arriving, never a complete head.
    let trickle = async {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"a").await.is_err() {
                break;
            }
        }
    };
    let started = Instant::now();
    trickle.await;
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(3),
        "still writable after {closed_after:?}: the slow head was not cut off"
    );
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the connection is still open");
    Ok(())
}

#[tokio::test]
async fn a_trickled_body_is_answered_408() -> TestResult {
    let app = app_with_server(json!({"request_timeout_ms": 1500})).await?;
    let token = partners().idp.billing_token().await?;
    let mut stream = connect(&app).await?;
    let head = format!(
        "POST /v1/workflows/orders/executions HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await?;
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // A byte a second, as a slowloris client sends; the answer must come meanwhile.
    while started.elapsed() < Duration::from_secs(6) {
        let _ = stream.write_all(b" ").await;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "expected 408 within 6 s, got {text:?}"
    );
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
    assert_eq!(app.queue_len("orders").await?, 0, "nothing was queued");
    Ok(())
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() -> TestResult {
    // The idle clock is not the header clock: idle for longer than the header timeout is
    // fine, idle past the idle timeout is not.
    let app =
        app_with_server(json!({"header_read_timeout_ms": 500, "idle_timeout_ms": 2000})).await?;
    let mut stream = connect(&app).await?;
    assert_eq!(get_healthz(&mut stream).await?, "HTTP/1.1 200 OK");
    // Idle between requests for longer than the header timeout, shorter than the idle one:
    // time itself is what is tested, so this waits rather than polls.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        get_healthz(&mut stream).await?,
        "HTTP/1.1 200 OK",
        "closed before the idle timeout"
    );
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(4)).await;
    let closed = closed.expect("an idle connection stays open past the idle timeout");
    assert!(
        closed >= Duration::from_millis(1500),
        "closed after {closed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_real_caller_is_served_beside_two_thousand_idle_connections() -> TestResult {
    // Both ends of 2,000 connections live in this process.
    rlimit::increase_nofile_limit(u64::MAX)?;
    let app = spawn_app().await?;
    let token = partners().idp.billing_token().await?;
    let mut idle = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        idle.push(connect(&app).await?);
    }
    // Some of them half-way through a head.
    for stream in idle.iter_mut().take(500) {
        stream.write_all(b"POST /v1/workflows/orders/exec").await?;
    }
    let started = Instant::now();
    let response = app
        .trigger("orders", &token, &json!({"input": {"order": 1}}))
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(idle);
    Ok(())
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once() -> TestResult {
    let app = app_with_server(json!({"max_connections": 50})).await?;
    let mut open = Vec::new();
    for _ in 0..50 {
        let mut stream = connect(&app).await?;
        // Answered: this connection holds one of the 50 places.
        assert_eq!(get_healthz(&mut stream).await?, "HTTP/1.1 200 OK");
        open.push(stream);
    }
    let mut surplus = connect(&app).await?;
    let _ = surplus
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (answer, closed) = read_until_closed(&mut surplus, Duration::from_secs(2)).await;
    assert!(answer.is_empty(), "the 51st connection was answered");
    assert!(
        closed.is_some_and(|c| c < Duration::from_secs(1)),
        "the 51st connection was not closed at once: {closed:?}"
    );
    for stream in &mut open {
        assert_eq!(get_healthz(stream).await?, "HTTP/1.1 200 OK");
    }
    // A place frees when a connection ends.
    drop(open.pop());
    let answered = crate::support::eventually(Duration::from_secs(5), "a freed place", || async {
        let mut stream = connect(&app).await.ok()?;
        get_healthz(&mut stream)
            .await
            .ok()
            .filter(|s| s.contains("200"))
    })
    .await;
    assert_eq!(answered, "HTTP/1.1 200 OK");
    Ok(())
}

#[tokio::test]
async fn oversized_heads_are_refused_431() -> TestResult {
    let app = spawn_app().await?;
    for extra in [
        format!("X-Big: {}\r\n", "a".repeat(40 * 1024)),
        (0..150)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>(),
    ] {
        let mut stream = connect(&app).await?;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let _ = stream.write_all(request.as_bytes()).await;
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
    }
    Ok(())
}

#[tokio::test]
async fn made_up_methods_and_paths_mint_no_metric_series() -> TestResult {
    let app = spawn_app().await?;
    let client = &app.http;
    for i in 0..100 {
        let method = reqwest::Method::from_bytes(format!("M{i}X").as_bytes())?;
        let _ = client.request(method, app.url("/healthz")).send().await?;
        let _ = client
            .get(app.url(&format!("/made-up-{i}/path")))
            .send()
            .await?;
        let _ = client
            .post(app.url(&format!("/v1/workflows/ghost-{i}/executions")))
            .json(&json!({"input": {}}))
            .send()
            .await?;
    }
    let text = client.get(app.url("/metrics")).send().await?.text().await?;
    let allowed = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
    ];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(rest) = line.split("method=\"").nth(1) {
            let method = rest.split('"').next().unwrap_or_default();
            assert!(
                allowed.contains(&method),
                "method label {method:?} in {line}"
            );
        }
        assert!(
            !line.contains("made-up"),
            "a raw path became a label: {line}"
        );
        assert!(
            !line.contains("ghost-"),
            "a made-up workflow became a label: {line}"
        );
    }
    assert!(
        text.contains(r#"route="/healthz",method="other""#),
        "made-up methods are counted as other"
    );
    assert!(text.contains(r#"route="unmatched""#));
    Ok(())
}

#[tokio::test]
async fn inputs_parsers_would_read_differently_are_refused() -> TestResult {
    let app = spawn_app_without_drain().await?;
    let token = partners().idp.billing_token().await?;
    let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
    let cases = [
        (
            r#"{"input": {"amount": 1, "amount": -5}}"#.to_owned(),
            "/amount",
        ),
        (
            r#"{"input": {"lines": [{"sku": "a"}, {"sku": "a", "qty": 1, "qty": 2}]}}"#.to_owned(),
            "/lines/1/qty",
        ),
        (format!(r#"{{"input": {{"deep": {deep}}}}}"#), "64 levels"),
    ];
    for (body, named) in cases {
        let response = app
            .http
            .post(app.url("/v1/workflows/orders/executions"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let problem: serde_json::Value = response.json().await?;
        assert_eq!(problem["code"], "invalid_body", "{body}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(named), "{detail:?} does not name {named}");
    }
    // 64 levels are fine.
    let deepest = format!("{}1{}", "[".repeat(63), "]".repeat(63));
    let response = app
        .http
        .post(app.url("/v1/workflows/orders/executions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"input": {{"deep": {deepest}}}}}"#))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        app.queue_len("orders").await?,
        1,
        "only the last one was queued"
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_signature_is_not_the_requests_fault() -> TestResult {
    // Step Functions refusing stepgate's signature (clock skew) for longer than the retry
    // age: the entries wait, the breaker opens, nothing is dead-lettered.
    let proxy = crate::support::Proxy::start(&partners().sfn_endpoint).await?;
    proxy.answer_with(Some(crate::support::aws_json_error(
        400,
        "InvalidSignatureException",
        "Signature expired: 20261202T100000Z is now earlier than 20261202T100500Z",
    )));
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("aws.endpoint_url", proxy.url.clone())
            .set_seconds("worker.retry_max_age_seconds", Duration::from_secs(1))
            .set("worker.breaker.failure_threshold", 3)
            .set_ms("worker.breaker.open_ms", Duration::from_millis(500))
            .set_ms("worker.breaker.max_open_ms", Duration::from_millis(500))
            .set("server.ops_listen", "127.0.0.1:0")
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(app.accept(&token, &json!({ "n": n })).await?);
    }
    crate::support::eventually(Duration::from_secs(10), "the breaker to open", || async {
        (crate::breaker::circuit(&app).await?["state"] == "open").then_some(())
    })
    .await;
    // Well past retry_max_age_seconds, with probes still refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The first call of a delivery asks the state machine's type (then starts it): either
    // reached the partner, and the partner refused it.
    let sent = proxy.sent();
    assert!(
        sent.contains("DescribeStateMachine") || sent.contains("StartExecution"),
        "the refusal came from the partner"
    );
    assert!(
        app.reasons("dead_lettered").await?.is_empty(),
        "dead-lettered"
    );
    for id in &ids {
        let status: serde_json::Value = app.request_status(id, &token).await?.json().await?;
        assert_eq!(status["status"], "queued", "{status}");
    }
    // The clock is mended: every entry starts, once.
    proxy.answer_with(None);
    for id in &ids {
        let status = app.settled_status(id, &token).await;
        assert_eq!(status["status"], "started", "{status}");
    }
    let started = crate::support::executions(&app.sfn, &app.state_machine_arn).await?;
    assert_eq!(started.len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_tokenless_flood_adds_a_handful_of_records_that_count_every_refusal() -> TestResult {
    let app = spawn_app_with(
        RedisServer::start(),
        // Two records per source and window: 10 records would take 10 s of flood.
        |config| config.set("audit.refusal_window_seconds", 2),
    )
    .await?;
    let before = app.audit_records().await?.len();
    let started = Instant::now();
    // Half of them name made-up workflows: a name the caller picks must not make a source.
    let flood = (0..500_u32).map(|n| {
        if n.is_multiple_of(2) {
            app.http.get(app.url("/v1/workflows")).send()
        } else {
            let url = app.url(&format!("/v1/workflows/ghost-{n}/executions"));
            app.http.post(url).json(&json!({"input": {}})).send()
        }
    });
    for response in futures_util::future::join_all(flood).await {
        assert_eq!(response?.status(), StatusCode::UNAUTHORIZED);
    }
    // The windows close on their own time: read what is written, without a flush.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let records = app.audit_records_written().await?;
    let new: Vec<_> = records[before..].iter().collect();
    assert!(
        new.len() <= 10,
        "{} records for 500 refusals in {:?}",
        new.len(),
        started.elapsed()
    );
    assert!(
        new.iter()
            .all(|r| r["event"] == "auth_failed"
                && r["v"] == stepgate::audit::record::SCHEMA_VERSION)
    );
    let counted: u64 = new.iter().filter_map(|r| r["count"].as_u64()).sum();
    assert_eq!(counted, 500, "the counts stand for every refusal: {new:#?}");
    let aggregated = new
        .iter()
        .find(|r| r["count"].as_u64() > Some(1))
        .ok_or("no aggregated record")?;
    assert!(aggregated["last_time"].is_string(), "{aggregated}");
    let verified = app.stepgate(&["audit", "verify"])?;
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    Ok(())
}

#[tokio::test]
async fn operator_endpoints_name_nothing_to_callers() -> TestResult {
    // Without an operations listener: readiness on the API port names no state machine and
    // no account.
    let app = spawn_app().await?;
    app.one_of_each_decision().await?;
    let name = stepgate::worker::breaker::state_machine_name(&app.state_machine_arn).to_owned();
    let account = app
        .state_machine_arn
        .split(':')
        .nth(4)
        .unwrap_or("?")
        .to_owned();
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await?
        .text()
        .await?;
    assert!(ready.contains("\"status\":\"ready\""), "{ready}");
    for secret in ["arn:aws", &account, &name] {
        assert!(!ready.contains(secret), "/readyz shows {secret}: {ready}");
    }

    // With one: the API port serves /healthz only of the three; the operations port serves
    // them all, naming state machines (never ARNs) there.
    let app = app_with_server(json!({"ops_listen": "127.0.0.1:0"})).await?;
    app.one_of_each_decision().await?;
    for path in ["/metrics", "/readyz"] {
        let status = app.http.get(app.url(path)).send().await?.status();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} on the API port");
    }
    assert_eq!(
        app.http.get(app.url("/healthz")).send().await?.status(),
        200
    );
    let metrics = app.http.get(app.ops_url("/metrics")).send().await?;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        !metrics.text().await?.contains("arn:aws"),
        "an ARN in the metrics"
    );
    let ready: serde_json::Value = app
        .http
        .get(app.ops_url("/readyz"))
        .send()
        .await?
        .json()
        .await?;
    let name = stepgate::worker::breaker::state_machine_name(&app.state_machine_arn);
    assert_eq!(ready["circuits"][0]["state_machine"], name, "{ready}");
    assert!(!ready.to_string().contains("arn:aws"), "{ready}");
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed() -> TestResult {
    let app = app_with_server(json!({"idle_timeout_ms": 1000})).await?;
    let path = "/docs/swagger-ui-bundle.js";
    let size = app
        .http
        .get(app.url(path))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    // Pipelined requests for far more than the socket buffers hold, then nothing read.
    const REQUESTS: usize = 100;
    let mut stream = connect(&app).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").repeat(REQUESTS);
    stream.write_all(request.as_bytes()).await?;
    // Nothing read for three idle timeouts: the stalled writes must be cut off meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (received, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        closed.is_some(),
        "a client that stopped reading is still connected"
    );
    assert!(
        received.len() < REQUESTS * size,
        "every answer was written: the stalled writes were not cut off"
    );
    Ok(())
}
