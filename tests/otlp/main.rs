//! OTLP export (`--features otlp`), end to end: `stepgate serve` with `log.otlp_endpoint`
//! sends its spans to a collector (here a minimal OTLP/HTTP receiver that keeps what it is
//! sent). The request span joins the caller's W3C trace, the enqueue span is its child, and
//! the drain's span continues the same trace across the queue; a graceful stop flushes what
//! is still buffered.

// The harness fails loudly when a partner cannot start.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use support::{KillOnDrop, RedisServer, TestResult, eventually, free_port};
use support::{partners, request_id_of, spawn_app_with};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn spans_reach_the_collector_in_the_callers_trace() -> TestResult {
    let collector = Collector::start().await?;
    // The in-process app only provides the configuration, Redis and the state machine.
    let mut app = spawn_app_with(RedisServer::start(), |config| config).await?;
    app.stop().await;
    let port = free_port();
    let mut serving = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_stepgate"))
            // Never the instance metadata service (a non-loopback address) from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["serve", "--config"])
            .arg(&app.config_path)
            .env("STEPGATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("STEPGATE_LOG__OTLP_ENDPOINT", &collector.url)
            .stdin(Stdio::null())
            .spawn()?,
    );
    app.base = format!("http://127.0.0.1:{port}");
    let health = app.url("/healthz");
    eventually(Duration::from_secs(30), "stepgate to serve", || async {
        let response = app.http.get(&health).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    let token = partners().idp.billing_token().await?;
    let response = app
        .http
        .post(app.url("/v1/workflows/orders/executions"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .json(&json!({"input": {"n": 1}}))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let request_id = request_id_of(response).await?;
    assert_eq!(
        app.settled_status(&request_id, &token).await["status"],
        "started"
    );

    // A graceful stop exports what the batch still holds.
    let stopped = Command::new("kill")
        .args(["-TERM", &serving.0.id().to_string()])
        .status()?;
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while serving.0.try_wait()?.is_none() {
        assert!(Instant::now() < deadline, "stepgate did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let spans = collector.spans();
    let ours: Vec<&Span> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let named = |name: &str| {
        ours.iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name:?} span in the caller's trace: {spans:#?}"))
    };
    let request = named("POST /v1/workflows/{workflow}/executions");
    assert_eq!(request.parent_span_id, CALLER_SPAN_ID);
    assert_eq!(request.kind, SPAN_KIND_SERVER);
    assert_eq!(named("enqueue").parent_span_id, request.span_id);
    let deliver = named("deliver");
    assert_eq!(
        deliver.parent_span_id, request.span_id,
        "the drain continues the accepting request's trace"
    );
    assert!(
        collector.received().windows(8).any(|w| w == b"stepgate"),
        "the resource names the service"
    );
    Ok(())
}

/// A minimal OTLP/HTTP trace receiver: keeps every protobuf body posted to `/v1/traces`.
struct Collector {
    url: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    async fn start() -> TestResult<Self> {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&bodies);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = Arc::clone(&kept);
                async move {
                    kept.lock().unwrap().push(body.to_vec());
                    // An empty ExportTraceServiceResponse: everything accepted.
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, bodies })
    }

    fn received(&self) -> Vec<u8> {
        self.bodies.lock().unwrap().concat()
    }

    /// Every span of every export request.
    fn spans(&self) -> Vec<Span> {
        let bodies = self.bodies.lock().unwrap();
        let mut spans = Vec::new();
        for body in bodies.iter() {
            // ExportTraceServiceRequest.resource_spans = 1; ResourceSpans.scope_spans = 2;
            // ScopeSpans.spans = 2.
            for resource in messages(body, 1) {
                for scope in messages(resource, 2) {
                    spans.extend(messages(scope, 2).into_iter().map(Span::decode));
                }
            }
        }
        spans
    }
}

const SPAN_KIND_SERVER: u64 = 2;

/// The fields of an OTLP span the test looks at (ids in hex).
#[derive(Debug, Default)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: u64,
}

impl Span {
    fn decode(bytes: &[u8]) -> Self {
        let mut span = Span::default();
        for (number, value) in fields(bytes) {
            match (number, value) {
                (1, Field::Bytes(b)) => span.trace_id = hex(b),
                (2, Field::Bytes(b)) => span.span_id = hex(b),
                (4, Field::Bytes(b)) => span.parent_span_id = hex(b),
                (5, Field::Bytes(b)) => span.name = String::from_utf8_lossy(b).into_owned(),
                (6, Field::Int(kind)) => span.kind = kind,
                _ => {}
            }
        }
        span
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A protobuf field's value, by wire type: integers (varint, fixed) or length-delimited bytes.
enum Field<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

/// The embedded messages in field `number` of `message`.
fn messages(message: &[u8], number: u64) -> Vec<&[u8]> {
    fields(message)
        .into_iter()
        .filter_map(|(n, value)| match value {
            Field::Bytes(b) if n == number => Some(b),
            _ => None,
        })
        .collect()
}

/// Decodes protobuf's wire format, one level deep; panics on malformed input (a test).
fn fields(mut message: &[u8]) -> Vec<(u64, Field<'_>)> {
    fn varint(input: &mut &[u8]) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let (byte, rest) = input.split_first().expect("truncated varint");
            *input = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let mut fields = Vec::new();
    while !message.is_empty() {
        let key = varint(&mut message);
        let value = match key & 7 {
            0 => Field::Int(varint(&mut message)),
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                let (bytes, rest) = message.split_at(width);
                message = rest;
                Field::Int(bytes.iter().rev().fold(0, |n, b| n << 8 | u64::from(*b)))
            }
            2 => {
                let length = usize::try_from(varint(&mut message)).expect("length");
                let (bytes, rest) = message.split_at(length);
                message = rest;
                Field::Bytes(bytes)
            }
            other => panic!("unexpected wire type {other}"),
        };
        fields.push((key >> 3, value));
    }
    fields
}
