//! Prometheus metrics: the exposition of a registry (OpenMetrics, or the older text format
//! for clients that do not ask for OpenMetrics), the `/metrics` endpoint (axum, on a thread
//! of its own), and the metrics of `monarch netboot serve`. The supervised chassis's own are
//! in `supervise/metrics.rs`.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;

/// Something with metrics to expose.
pub trait Exposition: Send + Sync + 'static {
    /// Its registry.
    fn registry(&self) -> &Registry;

    /// Every metric in the OpenMetrics text format (what a Prometheus server asks for).
    fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, self.registry()).is_err() {
            out.clear();
        }
        out
    }

    /// Every metric in the older Prometheus text format (version 0.0.4), for clients that do
    /// not ask for OpenMetrics (`promtool check metrics`, `curl`). prometheus-client writes
    /// only OpenMetrics; the two differ, for what is served here, in three things, which
    /// this rewrites: a counter's HELP and TYPE name the family, not its `_total` sample;
    /// UNIT lines; the `# EOF` line.
    fn render_text(&self) -> String {
        to_text_format(&self.render())
    }
}

fn to_text_format(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or(line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{kind}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint {addr}: {source}; give another address with --metrics")]
pub struct MetricsError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Serve `metrics` at `http://ADDR/metrics` from a thread of its own, until the process
/// ends. Returns the address bound (port 0 picks one).
pub fn serve(addr: SocketAddr, metrics: Arc<dyn Exposition>) -> Result<SocketAddr, MetricsError> {
    let err = |source| MetricsError { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(err)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(move |headers: axum::http::HeaderMap| {
                        let m = metrics.clone();
                        async move {
                            // A Prometheus server asks for OpenMetrics; anything else gets
                            // the older text format.
                            let open_metrics = headers
                                .get_all(axum::http::header::ACCEPT)
                                .iter()
                                .filter_map(|v| v.to_str().ok())
                                .any(|v| v.contains("application/openmetrics-text"));
                            if open_metrics {
                                (
                                    [(
                                        axum::http::header::CONTENT_TYPE,
                                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                    )],
                                    m.render(),
                                )
                            } else {
                                (
                                    [(
                                        axum::http::header::CONTENT_TYPE,
                                        "text/plain; version=0.0.4; charset=utf-8",
                                    )],
                                    m.render_text(),
                                )
                            }
                        }
                    }),
                );
                let _ = axum::serve(listener, app).await;
            });
        })
        .map_err(err)?;
    Ok(bound)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Protocol {
    protocol: String,
}

/// The metrics of `monarch netboot serve --metrics ADDR`, per protocol (`tftp`, `http`,
/// `discovery`, `dhcp`), counted from the services' events.
pub struct NetbootMetrics {
    registry: Registry,
    transfers: Family<Protocol, Counter>,
    bytes: Family<Protocol, Counter>,
    errors: Family<Protocol, Counter>,
}

/// The services, as their events name them.
pub const PROTOCOLS: &[&str] = &["tftp", "http", "discovery", "dhcp"];

impl Default for NetbootMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("monarch_netboot");
        let transfers = Family::<Protocol, Counter>::default();
        let bytes = Family::<Protocol, Counter>::default();
        let errors = Family::<Protocol, Counter>::default();
        registry.register(
            "transfers",
            "Completed transfers: TFTP files acknowledged whole, HTTP responses served, discovery images sent, DHCP leases acknowledged",
            transfers.clone(),
        );
        registry.register("bytes", "Bytes of the completed transfers", bytes.clone());
        registry.register(
            "errors",
            "Failed or refused requests and transfers, and a service's own send, receive or lease-file errors",
            errors.clone(),
        );
        for p in PROTOCOLS {
            let l = Protocol { protocol: (*p).to_string() };
            let _ = transfers.get_or_create(&l);
            let _ = bytes.get_or_create(&l);
            let _ = errors.get_or_create(&l);
        }
        NetbootMetrics { registry, transfers, bytes, errors }
    }
}

impl NetbootMetrics {
    /// Count one event of the services' stream (a JSON object with `service` and `event`).
    pub fn observe(&self, v: &Value) {
        let (Some(service), Some(event)) = (v["service"].as_str(), v["event"].as_str()) else { return };
        if !PROTOCOLS.contains(&service) {
            return;
        }
        let l = Protocol { protocol: service.to_string() };
        // An HTTP answer with an error status is a refusal, not a transfer.
        let http_error = service == "http" && v["status"].as_u64().is_some_and(|s| s >= 400);
        let done = !http_error
            && matches!(
                (service, event),
                ("tftp", "finished") | ("http", "served") | ("discovery", "sent") | ("dhcp", "ack")
            );
        let failed = http_error
            || matches!(
                (service, event),
                ("tftp", "failed" | "refused")
                    | ("http", "dropped")
                    | ("discovery", "refused" | "dropped" | "failed")
                    | (
                        "dhcp",
                        "nak"
                            | "declined"
                            | "bad_option"
                            | "send_failed"
                            | "recv_failed"
                            | "leases_save_failed"
                    )
            );
        if done {
            self.transfers.get_or_create(&l).inc();
            if let Some(b) = v["bytes"].as_u64() {
                self.bytes.get_or_create(&l).inc_by(b);
            }
        } else if failed {
            self.errors.get_or_create(&l).inc();
        }
    }
}

impl Exposition for NetbootMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_drops_eof() {
        let text =
            to_text_format("# HELP x Things.\n# TYPE x counter\nx_total 3\n# TYPE g gauge\ng 1\n# EOF\n");
        assert_eq!(text, "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n# TYPE g gauge\ng 1\n");
    }

    #[test]
    fn netboot_events_count_per_protocol_and_strangers_are_ignored() {
        let m = NetbootMetrics::default();
        m.observe(&json!({"service": "tftp", "event": "finished", "bytes": 1000}));
        m.observe(&json!({"service": "tftp", "event": "refused"}));
        m.observe(&json!({"service": "http", "event": "served", "bytes": 5, "status": 200}));
        m.observe(&json!({"service": "http", "event": "served", "bytes": 37, "status": 404}));
        m.observe(&json!({"service": "dhcp", "event": "ack"}));
        m.observe(&json!({"service": "smtp", "event": "finished", "bytes": 9}));
        m.observe(&json!({"event": "ready"}));
        let text = m.render_text();
        for want in [
            "monarch_netboot_transfers_total{protocol=\"tftp\"} 1",
            "monarch_netboot_bytes_total{protocol=\"tftp\"} 1000",
            "monarch_netboot_errors_total{protocol=\"tftp\"} 1",
            "monarch_netboot_bytes_total{protocol=\"http\"} 5",
            "monarch_netboot_errors_total{protocol=\"http\"} 1",
            "monarch_netboot_transfers_total{protocol=\"dhcp\"} 1",
            "monarch_netboot_transfers_total{protocol=\"discovery\"} 0",
        ] {
            assert!(text.contains(want), "no {want} in:\n{text}");
        }
        assert!(!text.contains("smtp"));
    }
}
