//! The Lambda's metrics, as CloudWatch embedded metric format (EMF) documents written to its
//! log: CloudWatch turns each into metric data points, with no API call and no permission.
//!
//! The documents are derived from the same registry `serve` exposes on `/metrics`, so the two
//! share one scheme: the Prometheus family `ecs_reloader_<name>` (`_total` for counters) is the
//! CloudWatch metric `<name>` in namespace `ecs-reloader`, and its labels are the dimensions.
//! Counters are sent as what they grew by since the previous document (CloudWatch sums them).
//! Gauges and histograms stay in `serve`, whose process they describe.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// The CloudWatch namespace of every metric.
pub(crate) const NAMESPACE: &str = "ecs-reloader";

/// A series' labels, which are its dimensions.
type Labels = Vec<(String, String)>;

/// Counter values last sent, by (metric, labels).
pub(crate) type Sent = BTreeMap<(String, Labels), f64>;

/// One metric of a document: name, value, CloudWatch unit.
type Datum = (String, f64, &'static str);

struct Sample {
    name: String,
    labels: Labels,
    value: f64,
    counter: bool,
}

/// Reads the OpenMetrics text `Metrics::render` produces.
fn samples(text: &str) -> Vec<Sample> {
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((family, kind)) = rest.split_once(' ') {
                kinds.insert(family.to_string(), kind.trim().to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (s, v),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels: Labels = labels
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            })
            .collect();
        // Counters only: the gauges (leader, busy, changes waiting, queue depth, stale services)
        // describe a long-running `serve`, and would read 0 in every Lambda document.
        let (family, counter) = match name.strip_suffix("_total") {
            Some(f) if kinds.get(f).is_some_and(|k| k == "counter") => (f, true),
            // Gauges, histogram series and anything unknown.
            _ => continue,
        };
        let Some(short) = family.strip_prefix("ecs_reloader_") else {
            continue;
        };
        out.push(Sample {
            name: short.to_string(),
            labels,
            value,
            counter,
        });
    }
    out
}

/// The EMF documents for the registry's state `text` at `timestamp_ms`, given what was `sent`
/// before (updated in place). Counters that did not grow are left out.
pub(crate) fn documents(text: &str, sent: &mut Sent, timestamp_ms: i64) -> Vec<Value> {
    // One document per set of dimensions.
    let mut groups: BTreeMap<Labels, Vec<Datum>> = BTreeMap::new();
    for s in samples(text) {
        let value = if s.counter {
            let key = (s.name.clone(), s.labels.clone());
            let before = sent.insert(key, s.value).unwrap_or(0.0);
            let delta = s.value - before;
            if delta <= 0.0 {
                continue;
            }
            delta
        } else {
            s.value
        };
        let unit = if s.counter { "Count" } else { "None" };
        groups
            .entry(s.labels)
            .or_default()
            .push((s.name, value, unit));
    }
    groups
        .into_iter()
        .map(|(labels, metrics)| {
            let mut doc = Map::new();
            let dims: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            let defs: Vec<Value> = metrics
                .iter()
                .map(|(n, _, unit)| json!({"Name": n, "Unit": unit}))
                .collect();
            doc.insert(
                "_aws".into(),
                json!({
                    "Timestamp": timestamp_ms,
                    "CloudWatchMetrics": [{
                        "Namespace": NAMESPACE,
                        "Dimensions": [dims],
                        "Metrics": defs,
                    }],
                }),
            );
            for (k, v) in &labels {
                doc.insert(k.clone(), json!(v));
            }
            for (n, v, _) in metrics {
                doc.insert(n, json!(v));
            }
            Value::Object(doc)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::guard::Stats;
    use crate::metrics::Metrics;

    #[test]
    fn counters_go_as_growth_with_labels_as_dimensions() {
        let m = Metrics::new();
        m.rollout("started");
        m.rollout("started");
        m.rollout("held");
        m.stale_services.set(4);
        let mut sent = Sent::new();
        let docs = documents(&m.render(&Stats::default()), &mut sent, 1_700_000_000_000);
        let started = docs
            .iter()
            .find(|d| d["kind"] == "started" && d.get("rollouts").is_some())
            .expect("rollouts{kind=started}");
        assert_eq!(started["rollouts"], 2.0);
        assert_eq!(
            started["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            NAMESPACE
        );
        assert_eq!(
            started["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "kind"
        );
        assert_eq!(started["_aws"]["Timestamp"], 1_700_000_000_000i64);
        assert!(
            docs.iter().all(|d| d.get("stale_services").is_none()),
            "serve's gauges stay in serve: {docs:?}"
        );

        // The next document carries only what grew.
        m.rollout("started");
        let docs = documents(&m.render(&Stats::default()), &mut sent, 1_700_000_001_000);
        let started: Vec<&Value> = docs
            .iter()
            .filter(|d| d.get("rollouts").is_some())
            .collect();
        assert_eq!(started.len(), 1, "{docs:?}");
        assert_eq!(started[0]["kind"], "started");
        assert_eq!(started[0]["rollouts"], 1.0);
    }
}
