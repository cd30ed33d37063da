//! Logging: structured JSON for machines, pretty for terminals; with the `otlp` feature, the
//! request and drain spans exported over OTLP/HTTP too, joined to the caller's W3C trace.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::HeaderMap;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// Whether spans leave the process: request spans are then made at `INFO` (exported),
/// otherwise at `DEBUG`, which the usual `info` filter turns into no work at all.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// What must outlive serving: the span exporter, flushed by [`Telemetry::shutdown`].
#[must_use = "spans still buffered are lost unless shut down"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// Installs the global subscriber; `RUST_LOG` overrides `log.level` (for the logs only).
pub fn init(config: &LogConfig) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let logs = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    #[cfg(feature = "otlp")]
    let provider = otlp::provider(config.otlp_endpoint.as_deref())?;
    #[cfg(feature = "otlp")]
    let exported = provider.as_ref().map(otlp::layer);
    #[cfg(not(feature = "otlp"))]
    let exported: Option<BoxedLayer> = None;
    EXPORTING.store(exported.is_some(), Ordering::Relaxed);
    let layers: Vec<BoxedLayer> = std::iter::once(logs).chain(exported).collect();
    // `serve` installs it once; a second install would fail and keep the first.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    #[cfg(not(feature = "otlp"))]
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        tracing::warn!(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build has no OTLP export (build with --features otlp); no spans are exported"
        );
    }
    Ok(Telemetry {
        #[cfg(feature = "otlp")]
        provider,
    })
}

impl Telemetry {
    /// Exports the spans still buffered (the exporter blocks: off the async workers).
    pub async fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                eprintln!("stepgate: spans not exported at shutdown: {e}");
            }
        }
    }
}

/// Makes `span` a child of the caller's trace, when a `traceparent` came in and spans are
/// exported.
pub fn join_caller_trace(span: &tracing::Span, headers: &HeaderMap) {
    #[cfg(feature = "otlp")]
    if exporting() {
        otlp::join_caller_trace(span, headers);
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, headers);
}

/// `span`'s W3C `traceparent`, when spans are exported, to carry its trace across the queue.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    #[cfg(feature = "otlp")]
    if exporting() {
        return otlp::traceparent(span);
    }
    let _ = span;
    None
}

/// Makes `span` (not yet entered) continue the trace a queue entry carried.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otlp")]
    if exporting()
        && let Some(traceparent) = traceparent
    {
        let carrier =
            std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        otlp::set_parent(span, &carrier);
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, traceparent);
}

#[cfg(feature = "otlp")]
mod otlp {
    use axum::http::HeaderMap;
    use opentelemetry::propagation::Extractor;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Level;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;

    use super::BoxedLayer;

    /// The exporter, if one is asked for: by `log.otlp_endpoint` (the collector's base URL,
    /// as `OTEL_EXPORTER_OTLP_ENDPOINT`), or else by the standard `OTEL_EXPORTER_OTLP_*`
    /// variables, which the exporter reads itself (headers, timeout, compression too).
    pub fn provider(endpoint: Option<&str>) -> anyhow::Result<Option<SdkTracerProvider>> {
        let by_environment = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        if endpoint.is_none() && !by_environment {
            return Ok(None);
        }
        let mut exporter = SpanExporter::builder().with_http();
        if let Some(base) = endpoint {
            exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
        }
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("stepgate");
        }
        let provider = SdkTracerProvider::builder()
            // A batch, sent from the processor's own thread: a slow collector never holds up
            // a request, and a full buffer drops spans rather than memory growing.
            .with_batch_exporter(exporter.build()?)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Some(provider))
    }

    /// stepgate's own spans only: the exporter's HTTP client must not trace its own exports.
    pub fn layer(provider: &SdkTracerProvider) -> BoxedLayer {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("stepgate"))
            .with_filter(Targets::new().with_target("stepgate", Level::INFO))
            .boxed()
    }

    pub fn join_caller_trace(span: &tracing::Span, headers: &HeaderMap) {
        set_parent(span, &Headers(headers));
    }

    /// Parents `span` on the trace context `carrier` holds (none: `span` starts a trace).
    pub fn set_parent(span: &tracing::Span, carrier: &dyn Extractor) {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(carrier)
        });
        // Only fails without the OpenTelemetry layer, which is installed whenever exporting.
        let _ = span.set_parent(parent);
    }

    pub fn traceparent(span: &tracing::Span) -> Option<String> {
        let mut carrier = std::collections::HashMap::new();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&span.context(), &mut carrier);
        });
        carrier.remove("traceparent")
    }

    struct Headers<'a>(&'a HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|name| name.as_str()).collect()
        }
    }
}
