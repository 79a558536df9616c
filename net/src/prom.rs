//! Prometheus exposition through `prometheus-client`: a scrape encodes the binary's current
//! snapshot (counters and gauges read at scrape time, as a `Collector` does) and its live
//! step-time histograms, every series carrying the run's labels, in OpenMetrics text.

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`render`]'s text (Prometheus negotiates it; curl shows it as is).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A series' labels, `(name, value)`: run, task, method, worker.
pub type Labels = Vec<(&'static str, String)>;

/// Per-step wall times. The buckets double from 1 ms to ~33 s: a tiny test model's step
/// and a roberta-base step on a CPU both land inside the range, not in `+Inf`.
#[derive(Debug, Clone)]
pub struct StepTimes {
    /// Seconds one optimizer step took (the coordinator: the whole step; a worker: its
    /// forward/backward).
    pub step: Histogram,
    /// Seconds the step's all-reduce took (the coordinator: the slowest worker's).
    pub allreduce: Histogram,
}

impl Default for StepTimes {
    fn default() -> StepTimes {
        let h = || Histogram::new(exponential_buckets(0.001, 2.0, 16));
        StepTimes { step: h(), allreduce: h() }
    }
}

impl StepTimes {
    pub fn observe(&self, step_seconds: f64, allreduce_seconds: f64) {
        self.step.observe(step_seconds);
        self.allreduce.observe(allreduce_seconds);
    }
}

/// One scrape's metric families, written through prometheus-client's encoder.
pub struct Scrape<'a, 'e> {
    enc: &'a mut DescriptorEncoder<'e>,
    labels: &'a Labels,
}

impl Scrape<'_, '_> {
    /// A counter; `name` ends in `_total`, which OpenMetrics keeps on the sample only.
    pub fn counter(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let family = name.strip_suffix("_total").unwrap_or(name);
        let c = ConstCounter::new(value);
        let mut m = self.enc.encode_descriptor(family, help, None, c.metric_type())?;
        c.encode(m.encode_family(self.labels)?)
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        self.gauges(name, help, [(Vec::new(), value)])
    }

    /// A gauge with one series per extra label set (added to the run's labels).
    pub fn gauges(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (Labels, f64)>) -> std::fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, ConstGauge::new(0.0).metric_type())?;
        for (extra, v) in series {
            let labels: Labels = self.labels.iter().cloned().chain(extra.into_iter().map(|(k, v)| (k, escape(&v)))).collect();
            ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> std::fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, h.metric_type())?;
        h.encode(m.encode_family(self.labels)?)
    }
}

/// What a binary exposes: its labels and its families, read fresh at each scrape.
pub trait Exposed: Send + Sync + 'static {
    fn labels(&self) -> Labels;
    fn families(&self, scrape: &mut Scrape) -> std::fmt::Result;
}

struct Collect<E>(E);

impl<E> std::fmt::Debug for Collect<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("peftrain collector")
    }
}

/// A label value as OpenMetrics text needs it: prometheus-client writes values as given, so a
/// quote, backslash or newline in one (a worker id is the user's own text) would break the
/// whole scrape.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl<E: Exposed> Collector for Collect<E> {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let labels: Labels = self.0.labels().into_iter().map(|(k, v)| (k, escape(&v))).collect();
        self.0.families(&mut Scrape { enc: &mut enc, labels: &labels })
    }
}

/// The OpenMetrics text of `exposed` at this moment.
pub fn render(exposed: impl Exposed) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collect(exposed)));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        // Only a malformed name can fail the encoder, and the names are literals: say so
        // in the scrape rather than panic the server.
        out.clear();
        let _ = writeln!(out, "# encoding failed: {e}\n# EOF");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Odd;

    impl Exposed for Odd {
        fn labels(&self) -> Labels {
            vec![("worker", "w\"1\\x\ny".to_string())]
        }
        fn families(&self, e: &mut Scrape) -> std::fmt::Result {
            e.counter("t_steps_total", "Steps.", 3.0)?;
            e.gauges("t_up", "Up.", [(vec![("peer", "a\"b".to_string())], 1.0)])
        }
    }

    #[test]
    fn label_values_are_escaped_as_openmetrics_says() {
        let text = render(Odd);
        // OpenMetrics: label values escape backslash, double quote and line feed.
        assert!(text.contains(r#"t_steps_total{worker="w\"1\\x\ny"} 3"#), "{text}");
        assert!(text.contains(r#"t_up{worker="w\"1\\x\ny",peer="a\"b"} 1"#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("t_")).count(), 2, "one line per sample: {text}");
    }
}
