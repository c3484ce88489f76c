//! The dashboards read only what the code emits: every metric the Grafana dashboard (`serve`'s
//! `/metrics`) and the template's CloudWatch dashboard (the Lambda's embedded-metric-format
//! documents) read must exist, with the labels or dimensions the panel uses. A test-only module
//! of its own, above both [`crate::metrics`] and [`crate::emf`], so that neither imports the
//! other.

use std::collections::{BTreeMap, BTreeSet};

use crate::aws::guard::Stats;
use crate::metrics::*;

/// Labels Prometheus adds to every series it scrapes: a dashboard may select or group by
/// them though the code never writes them.
const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

/// A registry in which every family has been used once, so that each shows its series and
/// label keys.
fn every_family_used() -> Metrics {
    let m = Metrics::new();
    m.event("rotation_succeeded");
    m.reconcile("resync");
    m.rollout("started");
    m.stale_services.set(1);
    m.queue_depth.set(1);
    m.queue_lag.observe(0.1);
    m.decision_latency.observe(0.1);
    m.busy.set(1);
    m.leader.set(1);
    m.waiting.set(1);
    m.target_rollout("111111111111", "eu-west-1", "started");
    m.set_target_up("111111111111", "eu-west-1", true);
    m.target_failure("111111111111", "eu-west-1");
    // `render` copies these from the guard's `Stats`; the label set is the same.
    let op = Operation {
        operation: "ecs:UpdateService".to_string(),
    };
    m.api_calls.get_or_create(&op).inc();
    m.api_throttles.get_or_create(&op).inc();
    m
}

/// The index of the `close` that ends what opens at `open`, skipping quoted strings.
fn closing(s: &[char], open: usize, close: char) -> Option<usize> {
    let mut i = open + 1;
    while i < s.len() {
        match s[i] {
            '"' | '\'' => i = after_string(s, i),
            c if c == close => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The index just after the string literal that starts at `i`.
fn after_string(s: &[char], i: usize) -> usize {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() && s[j] != quote {
        j += if s[j] == '\\' { 2 } else { 1 };
    }
    j + 1
}

/// The label keys of a selector's body (`kind="a", account=~"b"`).
fn matcher_keys(body: &[char]) -> Vec<String> {
    let mut keys = Vec::new();
    let mut i = 0;
    let mut start = true;
    while i < body.len() {
        let c = body[i];
        if c == '"' || c == '\'' {
            i = after_string(body, i);
            continue;
        }
        if c == ',' {
            start = true;
        } else if start && (c.is_ascii_alphabetic() || c == '_') {
            let key: String = body[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            i += key.len();
            keys.push(key);
            start = false;
            continue;
        }
        i += 1;
    }
    keys
}

/// What a PromQL expression (or a Grafana `label_values(...)` query) reads.
#[derive(Debug, Default)]
struct Query {
    /// Each `ecs_reloader_*` series named, with the label keys of its selector.
    metrics: Vec<(String, Vec<String>)>,
    /// Keys of `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`, `group_*(...)` and
    /// `label_values(..., key)`.
    grouping: Vec<String>,
    /// Keys of `by (...)` alone: what an aggregation's result keeps.
    by: Option<Vec<String>>,
}

fn promql(expr: &str) -> Query {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let s: Vec<char> = expr.chars().collect();
    let mut q = Query::default();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' {
            i = after_string(&s, i);
            continue;
        }
        if c == '[' {
            i = closing(&s, i, ']').map_or(s.len(), |e| e + 1);
            continue;
        }
        if c == '{' {
            // A selector without a metric name.
            let end = closing(&s, i, '}').expect(expr);
            q.grouping.extend(matcher_keys(&s[i + 1..end]));
            i = end + 1;
            continue;
        }
        let variable = i > 0 && s[i - 1] == '$';
        if !(c.is_ascii_alphabetic() || c == '_') || variable {
            i += 1;
            continue;
        }
        let ident: String = s[i..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == ':')
            .collect();
        i += ident.chars().count();
        let mut j = i;
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        let next = s.get(j).copied();
        if ident.starts_with("ecs_reloader_") {
            let mut keys = Vec::new();
            if next == Some('{') {
                let end = closing(&s, j, '}').expect(expr);
                keys = matcher_keys(&s[j + 1..end]);
                i = end + 1;
            }
            q.metrics.push((ident, keys));
        } else if GROUPING.contains(&ident.as_str()) && next == Some('(') {
            let end = closing(&s, j, ')').expect(expr);
            let keys: Vec<String> = s[j + 1..end]
                .iter()
                .collect::<String>()
                .split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect();
            if ident == "by" {
                q.by.get_or_insert_with(Vec::new).extend(keys.clone());
            }
            q.grouping.extend(keys);
            i = end + 1;
        } else if ident == "label_values" && next == Some('(') {
            let end = closing(&s, j, ')').expect(expr);
            let args: String = s[j + 1..end].iter().collect();
            if let Some((_, key)) = args.rsplit_once(',') {
                q.grouping.push(key.trim().to_string());
            }
            i = j + 1; // the series inside are read as usual
        }
    }
    q
}

/// The series `/metrics` shows, with their label keys (`le` for a histogram's buckets).
fn prometheus_series(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let s: Vec<char> = line.chars().collect();
        let name: String = s.iter().take_while(|c| **c != '{' && **c != ' ').collect();
        let keys = out.entry(name.clone()).or_default();
        let n = name.chars().count();
        if s.get(n) == Some(&'{') {
            let end = closing(&s, n, '}').expect(line);
            keys.extend(matcher_keys(&s[n + 1..end]));
        }
    }
    out
}

/// Every string in a JSON document, with the object it is a value of.
fn strings<'a>(
    v: &'a serde_json::Value,
    parent: Option<&'a serde_json::Map<String, serde_json::Value>>,
    out: &mut Vec<(
        &'a str,
        Option<&'a serde_json::Map<String, serde_json::Value>>,
    )>,
) {
    match v {
        serde_json::Value::String(s) => out.push((s, parent)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, parent, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, Some(o), out)),
        _ => {}
    }
}

/// Problems with the Grafana dashboard's queries: a series `/metrics` does not show, or a
/// label key the series does not carry. Also returns how many series references it read.
fn grafana_problems(
    dashboard: &str,
    series: &BTreeMap<String, BTreeSet<String>>,
) -> (Vec<String>, usize) {
    let doc: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard JSON");
    let mut all = Vec::new();
    strings(&doc, None, &mut all);
    let mut problems = Vec::new();
    let mut read = 0;
    for (text, parent) in all {
        if !text.contains("ecs_reloader_") {
            continue;
        }
        let q = promql(text);
        read += q.metrics.len();
        let mut carried: BTreeSet<String> = SCRAPE_LABELS.iter().map(|s| s.to_string()).collect();
        for (name, keys) in &q.metrics {
            let Some(emitted) = series.get(name) else {
                problems.push(format!("{name}: no such series on /metrics (in {text})"));
                continue;
            };
            carried.extend(emitted.iter().cloned());
            for k in keys {
                if !emitted.contains(k) && !SCRAPE_LABELS.contains(&k.as_str()) {
                    problems.push(format!("{name}: no label {k:?} (in {text})"));
                }
            }
        }
        for k in &q.grouping {
            if !carried.contains(k) {
                problems.push(format!("label {k:?}: on none of its series (in {text})"));
            }
        }
        // The legend of a target names labels its result has.
        let legend = parent
            .filter(|p| p.get("expr").and_then(|e| e.as_str()) == Some(text))
            .and_then(|p| p.get("legendFormat"))
            .and_then(|l| l.as_str())
            .unwrap_or("");
        let kept: BTreeSet<String> = match &q.by {
            Some(by) => by.iter().cloned().collect(),
            None => carried.clone(),
        };
        for part in legend.split("{{").skip(1) {
            let key = part.split("}}").next().unwrap_or("").trim();
            if !kept.contains(key) {
                problems.push(format!(
                    "legend {{{{{key}}}}}: not a label of the result of {text}"
                ));
            }
        }
    }
    (problems, read)
}

/// The `ecs-reloader` metrics the CloudWatch dashboard of `template` reads: (name, dimension
/// keys), from its metric arrays and its SEARCH expressions.
fn cloudwatch_uses(template: &str) -> Vec<(String, BTreeSet<String>)> {
    let ns = crate::emf::NAMESPACE;
    let start = template
        .find("\n  Dashboard:\n")
        .expect("the template has a Dashboard resource")
        + 1;
    let mut section = String::new();
    for (n, line) in template[start..].lines().enumerate() {
        let top = !line.starts_with(' ') && !line.is_empty();
        let next_resource = line.starts_with("  ") && !line.starts_with("   ");
        if n > 0 && (top || next_resource) {
            break;
        }
        section.push_str(line);
        section.push('\n');
    }
    let compact: String = section
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '\\')
        .collect();
    for shorthand in ["[\".\",", "[\"..\",", "[\"...\","] {
        assert!(
            !compact.contains(shorthand),
            "write each metric of the dashboard out in full (namespace, name, dimensions), \
             not with the {shorthand} shorthand, so that it can be checked"
        );
    }
    let mut uses = Vec::new();
    // Metric arrays: ["ecs-reloader", name, key, value, ..., {options}].
    let array = format!("[\"{ns}\"");
    let mut arrays = 0;
    for (at, _) in compact.match_indices(&array) {
        let v: serde_json::Value = serde_json::Deserializer::from_str(&compact[at..])
            .into_iter()
            .next()
            .expect("a metric array")
            .expect("a metric array is JSON");
        let items: Vec<&str> = v
            .as_array()
            .expect("an array")
            .iter()
            .map_while(|x| x.as_str())
            .collect();
        assert!(
            items.len() >= 2 && items.len() % 2 == 0,
            "[namespace, name, key, value, ...]: {v}"
        );
        let dims = items[2..]
            .iter()
            .step_by(2)
            .map(|k| k.to_string())
            .collect();
        uses.push((items[1].to_string(), dims));
        arrays += 1;
    }
    // SEARCH('{"ecs-reloader",key,...} MetricName="name"', ...).
    let schema = format!("{{\"{ns}\"");
    let mut searches = 0;
    for (at, _) in compact.match_indices(&schema) {
        let rest = &compact[at + 1..];
        let end = rest.find('}').expect("a schema ends");
        let dims: BTreeSet<String> = rest[..end]
            .split(',')
            .skip(1)
            .map(|k| k.trim_matches('"').to_string())
            .collect();
        let term = &rest[end..rest.find('\'').expect("a SEARCH's query ends")];
        let name = term
            .split_once("MetricName=")
            .map(|(_, n)| {
                n.trim_start_matches('"')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .expect("each SEARCH over ecs-reloader names its metric (MetricName=)");
        uses.push((name, dims));
        searches += 1;
    }
    assert_eq!(
        compact.matches("SEARCH(").count(),
        searches,
        "every SEARCH of the dashboard has an {{\"{ns}\",...}} schema"
    );
    assert_eq!(
        compact.matches(&format!("\"{ns}\"")).count(),
        arrays + searches,
        "every {ns} metric of the dashboard is a metric array or a SEARCH schema"
    );
    uses
}

/// What the Lambda's embedded-metric-format documents carry: each metric's name, and the
/// dimension sets it comes with.
fn emf_metrics(text: &str) -> BTreeMap<String, BTreeSet<BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    for doc in crate::emf::documents(text, &mut crate::emf::Sent::new(), 0) {
        for def in doc["_aws"]["CloudWatchMetrics"].as_array().expect("EMF") {
            assert_eq!(def["Namespace"], crate::emf::NAMESPACE);
            for dims in def["Dimensions"].as_array().expect("EMF dimensions") {
                let dims: BTreeSet<String> = dims
                    .as_array()
                    .expect("a dimension set")
                    .iter()
                    .map(|d| d.as_str().expect("a dimension").to_string())
                    .collect();
                for m in def["Metrics"].as_array().expect("EMF metrics") {
                    let name = m["Name"].as_str().expect("a name").to_string();
                    out.entry(name).or_default().insert(dims.clone());
                }
            }
        }
    }
    out
}

fn cloudwatch_problems(
    uses: &[(String, BTreeSet<String>)],
    emitted: &BTreeMap<String, BTreeSet<BTreeSet<String>>>,
) -> Vec<String> {
    uses.iter()
        .filter(|(name, dims)| !emitted.get(name).is_some_and(|sets| sets.contains(dims)))
        .map(|(name, dims)| {
            format!(
                "{name} with dimensions {dims:?}: the Lambda writes {:?}",
                emitted.get(name)
            )
        })
        .collect()
}

/// A rename must not blank a panel silently: every metric the Grafana dashboard
/// (`serve`'s `/metrics`) and the template's CloudWatch dashboard (the Lambda's EMF) read
/// is one the code emits, with the labels or exact dimension set the panel uses.
#[test]
fn dashboards_use_only_metrics_the_code_emits() {
    let m = every_family_used();
    let text = m.render(&Stats::default());

    // The test's own registry shows every family, so each one's labels are known.
    let series = prometheus_series(&text);
    for line in text.lines() {
        let Some(family) = line
            .strip_prefix("# TYPE ")
            .and_then(|l| l.split(' ').next())
        else {
            continue;
        };
        assert!(
            ["", "_total", "_bucket"]
                .iter()
                .any(|s| series.contains_key(&format!("{family}{s}"))),
            "use {family} in every_family_used, so that its series and labels show: {text}"
        );
    }

    let grafana = include_str!("../dashboards/grafana-ecs-reloader.json");
    let (problems, read) = grafana_problems(grafana, &series);
    assert!(
        read >= 15,
        "the Grafana dashboard's queries were not read ({read})"
    );
    assert!(problems.is_empty(), "Grafana dashboard: {problems:#?}");

    let emitted = emf_metrics(&text);
    let uses = cloudwatch_uses(include_str!("../infra/ecs-reloader.yaml"));
    assert!(
        uses.len() >= 10,
        "the CloudWatch dashboard was not read: {uses:?}"
    );
    let problems = cloudwatch_problems(&uses, &emitted);
    assert!(problems.is_empty(), "CloudWatch dashboard: {problems:#?}");
}

/// The check fails on what a rename would leave behind.
#[test]
fn the_dashboard_check_finds_a_renamed_metric_or_label() {
    let text = every_family_used().render(&Stats::default());
    let series = prometheus_series(&text);
    let panel = |expr: &str, legend: &str| {
        serde_json::json!({"panels": [{"targets": [{"expr": expr, "legendFormat": legend}]}]})
            .to_string()
    };
    let ok = panel(
        r#"sum by (kind) (rate(ecs_reloader_rollouts_total{instance=~"$i", kind!="x"}[$__rate_interval]))"#,
        "{{kind}}",
    );
    assert_eq!(grafana_problems(&ok, &series), (vec![], 1));
    for bad in [
        panel("rate(ecs_reloader_rollouts[5m])", ""), // no _total
        panel("rate(ecs_reloader_rollout_total[5m])", ""),
        panel(r#"ecs_reloader_rollouts_total{outcome="failed"}"#, ""),
        panel("sum by (outcome) (ecs_reloader_rollouts_total)", ""),
        panel("sum by (kind) (ecs_reloader_rollouts_total)", "{{account}}"),
        panel("max by (account) (ecs_reloader_leader)", ""),
        panel("histogram_quantile(0.9, sum by (le) (rate(ecs_reloader_queue_lag_bucket[5m])))", ""),
        r#"{"templating": {"list": [{"definition": "label_values(ecs_reloader_target_up, zone)"}]}}"#
            .to_string(),
    ] {
        assert!(!grafana_problems(&bad, &series).0.is_empty(), "{bad}");
    }

    let emitted = emf_metrics(&text);
    let template = |metrics: &str| {
        format!("Resources:\n  Dashboard:\n    Properties:\n      Body: '{metrics}'\n  Next:\n    Type: x\n")
    };
    let uses = |metrics: &str| cloudwatch_uses(&template(metrics));
    let good = uses(
        r#"[["ecs-reloader", "rollouts", "kind", "held"], [{"expression": "SEARCH('{\"ecs-reloader\",account,region} MetricName=\"target_failures\"', 'Sum', 300)"}]]"#,
    );
    assert_eq!(good.len(), 2);
    assert_eq!(cloudwatch_problems(&good, &emitted), Vec::<String>::new());
    for bad in [
        r#"[["ecs-reloader", "rollouts_total", "kind", "held"]]"#,
        r#"[["ecs-reloader", "rollouts", "outcome", "held"]]"#,
        r#"[["ecs-reloader", "rollouts"]]"#, // no dimensions: another metric
        r#"[["ecs-reloader", "target_up", "account", "1", "region", "r"]]"#, // a gauge: serve's
        r#"[["ecs-reloader", "target_rollouts", "kind", "failed"]]"#, // one dimension short
        r#"[{"expression": "SEARCH('{\"ecs-reloader\",kind} MetricName=\"api_calls\"', 'Sum', 300)"}]"#,
    ] {
        assert!(
            !cloudwatch_problems(&uses(bad), &emitted).is_empty(),
            "{bad}"
        );
    }
}
