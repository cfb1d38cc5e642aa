//! The HTTP client's metrics, as `/metrics` and `--metrics-file` show them.
//! A test binary of its own: the metrics recorder is process-wide.

mod common;

/// The value of the sample `name` (with its labels, if any) in Prometheus
/// text, or 0 if absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_connections_and_in_flight_are_counted() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();

    let (host, load) = common::slow_service().await;
    common::run_wide(&host, 10, 10).await;

    let text = metrics.render();
    assert_eq!(sample(&text, "braid_http_requests_total"), 100.0, "{text}");
    let opened = sample(&text, "braid_http_connections_opened_total");
    let used = load.lock().unwrap().peers.len() as f64;
    assert!(
        opened >= used,
        "{opened} connections counted, the service saw {used}: {text}"
    );
    assert!(opened * 3.0 <= 100.0, "{opened} connections for 100 calls");
    let in_flight = format!("braid_http_in_flight{{host=\"{host}\"}}");
    assert!(text.contains(&in_flight), "{text}");
    assert_eq!(
        sample(&text, &in_flight),
        0.0,
        "every slot released: {text}"
    );
}
