//! OpenTelemetry trace export over OTLP/HTTP, behind the `otlp` cargo
//! feature (off by default).
//!
//! Built with `--features otlp`, braid exports its `run` and `agent` spans
//! when the standard variable `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the other standard variables
//! apply (`OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf` or `http/json`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`).
//! `http` and `llm` agents send the W3C `traceparent` header of their
//! attempt's span, so the services they call join the run's trace.
//! Spans are queued to the SDK's batch processor, which exports from its own
//! thread: a slow or dead collector never slows a run (spans past the
//! queue's bound are dropped and counted), and export errors are logged.
//!
//! Built without the feature, a set endpoint gets a warning that says so,
//! rather than silence.

use tracing_subscriber::{Layer, Registry};

/// The layer that exports spans, if export is on.
pub(crate) type TraceLayer = Option<Box<dyn Layer<Registry> + Send + Sync>>;

/// The variables that turn export on.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The endpoint variable that is set (and not empty), if any.
fn endpoint_var() -> Option<&'static str> {
    ENDPOINT_VARS
        .into_iter()
        .find(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

#[cfg(not(feature = "otlp"))]
mod export {
    /// Nothing to flush: this build exports no traces.
    pub(crate) struct Export;

    pub(crate) fn layer() -> (super::TraceLayer, Option<Export>) {
        if let Some(var) = super::endpoint_var() {
            eprintln!(
                "warning: {var} is set, but this braid was built without the `otlp` feature, \
                 so no traces are exported (build with `cargo install --path crates/braid-cli \
                 --features otlp`)"
            );
        }
        (None, None)
    }
}

#[cfg(feature = "otlp")]
mod export {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::SpanExporter;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{LevelFilter, Targets};

    /// Flushes the spans still queued when it drops, at exit.
    pub(crate) struct Export {
        provider: SdkTracerProvider,
    }

    impl Drop for Export {
        fn drop(&mut self) {
            // A failure is already logged by the SDK (`BatchSpanProcessor.*`).
            let _ = self.provider.shutdown();
        }
    }

    fn enabled() -> bool {
        let set_to = |var: &str, value: &str| {
            std::env::var(var).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
        };
        super::endpoint_var().is_some()
            && !set_to("OTEL_SDK_DISABLED", "true")
            && !set_to("OTEL_TRACES_EXPORTER", "none")
    }

    pub(crate) fn layer() -> (super::TraceLayer, Option<Export>) {
        if !enabled() {
            return (None, None);
        }
        // The exporter's HTTPS client uses the same rustls provider as ours.
        braid_agents::install_tls_provider();
        let exporter = match SpanExporter::builder().with_http().build() {
            Ok(exporter) => exporter,
            Err(err) => {
                // Telemetry never stops a run: say why nothing is exported.
                eprintln!("warning: traces are not exported: {err}");
                return (None, None);
            }
        };
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("braid");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("braid");
        // `http` and `llm` agents send the W3C `traceparent` of their span.
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        // Runs and agent attempts (braid_core's `run` and `agent` spans, and
        // the events inside them), whatever RUST_LOG says about stderr.
        let spans = Targets::new()
            .with_target("braid_core", LevelFilter::DEBUG)
            .with_target("braid_store", LevelFilter::INFO)
            .with_target("braid_agents", LevelFilter::INFO)
            .with_target("braid_server", LevelFilter::INFO)
            .with_default(LevelFilter::WARN);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_filter(spans)
            .boxed();
        (Some(layer), Some(Export { provider }))
    }
}

pub(crate) use export::{Export, layer};
