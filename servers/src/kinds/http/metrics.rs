//! `GET /metrics`: requests, errors, tokens and latencies per server and endpoint, in
//! Prometheus' text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::lock;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The counters, by (server, endpoint).
#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String), Series>>,
}

/// A counter family: its name, type, help and value.
type Family = (&'static str, &'static str, &'static str, fn(&Series) -> u64);

#[derive(Default)]
struct Series {
    requests: u64,
    errors: u64,
    tokens: u64,
    seconds_sum: f64,
    /// Requests at or under each bucket's bound (cumulative, as Prometheus wants them).
    buckets: [u64; BUCKETS.len()],
}

impl Metrics {
    /// Counts one answered request: `seconds` until its response began, `ok` unless it
    /// failed.
    pub fn request(&self, server: &str, endpoint: &str, seconds: f64, ok: bool) {
        let mut series = lock(&self.series);
        let s = series
            .entry((server.to_string(), endpoint.to_string()))
            .or_default();
        s.requests += 1;
        s.errors += u64::from(!ok);
        s.seconds_sum += seconds;
        for (bound, count) in BUCKETS.iter().zip(&mut s.buckets) {
            if seconds <= *bound {
                *count += 1;
            }
        }
    }

    /// Counts tokens a server generated for an endpoint.
    pub fn tokens(&self, server: &str, endpoint: &str, tokens: u64) {
        lock(&self.series)
            .entry((server.to_string(), endpoint.to_string()))
            .or_default()
            .tokens += tokens;
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let series = lock(&self.series);
        let mut out = String::new();
        let families: [Family; 3] = [
            (
                "cpipe_http_requests_total",
                "counter",
                "Requests answered, by server and endpoint.",
                |s| s.requests,
            ),
            (
                "cpipe_http_errors_total",
                "counter",
                "Requests answered with an error.",
                |s| s.errors,
            ),
            (
                "cpipe_http_tokens_total",
                "counter",
                "Tokens generated.",
                |s| s.tokens,
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((server, endpoint), s) in series.iter() {
                let _ = writeln!(out, "{name}{} {}", labels(server, endpoint, None), value(s));
            }
        }
        let name = "cpipe_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time until the response began (for streams, the first token).\n# TYPE {name} histogram"
        );
        for ((server, endpoint), s) in series.iter() {
            for (bound, count) in BUCKETS.iter().zip(s.buckets) {
                let le = bound.to_string();
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {count}",
                    labels(server, endpoint, Some(&le))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                labels(server, endpoint, Some("+Inf")),
                s.requests
            );
            let _ = writeln!(
                out,
                "{name}_sum{} {}",
                labels(server, endpoint, None),
                s.seconds_sum
            );
            let _ = writeln!(
                out,
                "{name}_count{} {}",
                labels(server, endpoint, None),
                s.requests
            );
        }
        out
    }
}

/// `{server="chat",endpoint="/v1/chat/completions"}`, escaped as the format requires.
fn labels(server: &str, endpoint: &str, le: Option<&str>) -> String {
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut text = format!(
        "{{server=\"{}\",endpoint=\"{}\"",
        escape(server),
        escape(endpoint)
    );
    if let Some(le) = le {
        text += &format!(",le=\"{le}\"");
    }
    text + "}"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text_with_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.request("chat", "/v1/chat/completions", 0.02, true);
        metrics.request("chat", "/v1/chat/completions", 3.0, false);
        metrics.tokens("chat", "/v1/chat/completions", 17);
        let text = metrics.render();
        let labels = "server=\"chat\",endpoint=\"/v1/chat/completions\"";
        assert!(
            text.contains(&format!("cpipe_http_requests_total{{{labels}}} 2")),
            "{text}"
        );
        assert!(text.contains(&format!("cpipe_http_errors_total{{{labels}}} 1")));
        assert!(text.contains(&format!("cpipe_http_tokens_total{{{labels}}} 17")));
        assert!(text.contains(&format!(
            "cpipe_http_request_duration_seconds_bucket{{{labels},le=\"0.01\"}} 0"
        )));
        assert!(text.contains(&format!(
            "cpipe_http_request_duration_seconds_bucket{{{labels},le=\"0.025\"}} 1"
        )));
        assert!(text.contains(&format!(
            "cpipe_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"
        )));
        assert!(text.contains(&format!(
            "cpipe_http_request_duration_seconds_count{{{labels}}} 2"
        )));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels("a\"b", "c\\d", None),
            "{server=\"a\\\"b\",endpoint=\"c\\\\d\"}"
        );
    }
}
