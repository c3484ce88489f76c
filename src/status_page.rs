//! The status page `serve` answers on `GET /` (the listener of `/metrics`): one server-rendered
//! HTML page, no script, refreshing itself, that answers what people running a reloader ask
//! first: who leads, whether every target is reachable, what is in flight and who changed it,
//! which services need a person (held, pending approval, scheduled, unknown) and why, and what
//! the last rollouts did. Everything shown is escaped; there is no secret value to show.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::decide::Decision;
use crate::plan::ServiceKey;
use crate::reconcile::Pass;
use crate::rollout::{Outcome, Phase};
use crate::targets::TargetStatus;

/// How many finished rollouts the page lists.
const RECENT: usize = 25;

/// What the page shows, kept up to date by every pass and rollout.
#[derive(Default)]
pub(crate) struct Board(Mutex<State>);

#[derive(Default)]
struct State {
    /// Services that need a person, by key: decision label and reason.
    attention: BTreeMap<ServiceKey, (&'static str, String)>,
    /// The last finished rollouts, newest first.
    recent: VecDeque<Finished>,
    /// Each target and how its last pass went.
    targets: Vec<TargetStatus>,
    /// When the last pass ended.
    last_pass: Option<DateTime<Utc>>,
}

struct Finished {
    at: DateTime<Utc>,
    key: ServiceKey,
    outcome: String,
    why: Vec<String>,
}

/// What the page adds from `serve` itself at the moment it is asked.
pub(crate) struct Live {
    /// Who leads, in words.
    pub(crate) leader: String,
    /// `/readyz`'s answer, in words.
    pub(crate) ready: String,
    /// Changes in flight: what changed, who changed it, when it is decided again.
    pub(crate) in_flight: Vec<String>,
    /// Passes running.
    pub(crate) busy: i64,
    /// Now.
    pub(crate) now: DateTime<Utc>,
}

impl Board {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a pass decided: every service it looked at is either listed (it needs a person)
    /// or not (any more).
    pub(crate) fn after_pass(&self, pass: &Pass, at: DateTime<Utc>) {
        let mut s = self.state();
        for a in &pass.assessment.services {
            let needs = match &a.decision {
                Decision::Held { reason, .. } => Some(("held", format!("{}. What to do: fix the failed service (or change the value again); the next pass looks again.", reason.trim_end_matches('.')))),
                Decision::Pending { reason, .. } if reason.starts_with("notify-only") => Some(("pending", format!("notify-only: waits for a person's approval. What to do: ecs-reloader reconcile --service {} approves it.", a.key))),
                Decision::Pending { reason, .. } => Some(("pending", format!("{}. What to do: approve what it waits for.", reason.trim_end_matches('.')))),
                Decision::Scheduled { at, window, .. } => Some(("scheduled", format!("outside its maintenance window ({window}): rolls when it opens, {}.", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))),
                Decision::Unknown { problems } => Some(("unknown", format!("{}. What to do: grant or fix what it names.", problems.join("; ").trim_end_matches('.')))),
                _ => None,
            };
            match needs {
                Some(n) => {
                    s.attention.insert(a.key.clone(), n);
                }
                None => {
                    s.attention.remove(&a.key);
                }
            }
        }
        if !pass.targets.is_empty() {
            s.targets = pass.targets.clone();
        }
        s.last_pass = Some(at);
    }

    /// After a full resync: what it did not see needs no person any more (a service deleted, or
    /// no longer resolving a changed value), except in targets it could not reach, whose
    /// services it could not see.
    pub(crate) fn resynced(&self, pass: &Pass) {
        let seen: std::collections::BTreeSet<&ServiceKey> =
            pass.assessment.services.iter().map(|a| &a.key).collect();
        let unreachable: Vec<(&str, &str)> = pass
            .targets
            .iter()
            .filter(|t| t.problem.is_some())
            .map(|t| (t.account.as_str(), t.region.as_str()))
            .collect();
        self.state().attention.retain(|key, _| {
            seen.contains(key)
                || unreachable
                    .iter()
                    .any(|(a, r)| (a.is_empty() || *a == key.account) && *r == key.region)
        });
    }

    /// A replica that stopped leading no longer knows: it shows nothing stale.
    pub(crate) fn forget(&self) {
        let mut s = self.state();
        s.attention.clear();
        s.targets.clear();
    }

    /// A rollout's phase: finished ones are listed, newest first.
    pub(crate) fn rollout(
        &self,
        key: &ServiceKey,
        phase: &Phase,
        why: &[String],
        at: DateTime<Utc>,
    ) {
        let Phase::Done(outcome) = phase else {
            return;
        };
        let text = match outcome {
            Outcome::Healthy { deployment, .. } => format!("healthy ({deployment})"),
            Outcome::Triggered { deployment } => format!("triggered ({deployment})"),
            other => format!("{}: {}", other.label(), other.reason().unwrap_or_default()),
        };
        let mut s = self.state();
        s.recent.push_front(Finished {
            at,
            key: key.clone(),
            outcome: text,
            why: why.to_vec(),
        });
        s.recent.truncate(RECENT);
    }

    /// The page.
    pub(crate) fn render(&self, live: &Live) -> String {
        let s = self.state();
        let mut h = String::with_capacity(8 * 1024);
        h.push_str(concat!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta http-equiv=\"refresh\" content=\"10\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<title>ecs-reloader</title><style>",
            "body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:72rem;padding:0 1rem;line-height:1.4}",
            "table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}",
            "th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #999;vertical-align:top}",
            "th{border-bottom:2px solid #333}td.why{overflow-wrap:anywhere}td.when{white-space:nowrap}p.none{font-style:italic}",
            "</style></head><body><h1>ecs-reloader</h1>"
        ));
        let _ = write!(
            h,
            "<p><strong>Leader:</strong> {} &middot; <strong>Ready:</strong> {} &middot; <strong>Passes running:</strong> {} &middot; <strong>Last pass:</strong> {} &middot; <strong>Now:</strong> {}</p>",
            esc(&live.leader),
            esc(&live.ready),
            live.busy,
            s.last_pass.map(time).unwrap_or_else(|| "none yet".into()),
            time(live.now)
        );
        h.push_str("<h2>Targets</h2>");
        if s.targets.is_empty() {
            h.push_str("<p class=\"none\">The operator's own account and region only.</p>");
        } else {
            h.push_str("<table><tr><th>Account</th><th>Region</th><th>State</th></tr>");
            for t in &s.targets {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td class=\"why\">{}</td></tr>",
                    esc(if t.account.is_empty() {
                        "(own)"
                    } else {
                        &t.account
                    }),
                    esc(&t.region),
                    match &t.problem {
                        None => "reachable".to_string(),
                        Some(p) => format!("UNREACHABLE: {}", esc(p)),
                    }
                );
            }
            h.push_str("</table>");
        }
        h.push_str("<h2>Changes in flight</h2>");
        if live.in_flight.is_empty() {
            h.push_str("<p class=\"none\">None waiting.</p>");
        } else {
            h.push_str("<ul>");
            for c in &live.in_flight {
                let _ = write!(h, "<li>{}</li>", esc(c));
            }
            h.push_str("</ul>");
        }
        h.push_str("<h2>Needs a person</h2>");
        if s.attention.is_empty() {
            h.push_str(
                "<p class=\"none\">Nothing held, pending approval, scheduled or unknown.</p>",
            );
        } else {
            h.push_str(
                "<table><tr><th>Service</th><th>Decision</th><th>Why, and what to do</th></tr>",
            );
            for (key, (label, why)) in &s.attention {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td class=\"why\">{}</td></tr>",
                    esc(&service(key)),
                    label,
                    esc(why)
                );
            }
            h.push_str("</table>");
        }
        h.push_str("<h2>Last rollouts</h2>");
        if s.recent.is_empty() {
            h.push_str("<p class=\"none\">None since this replica started.</p>");
        } else {
            h.push_str("<table><tr><th>When</th><th>Service</th><th>Outcome</th><th>Changes, and who made them</th></tr>");
            for r in &s.recent {
                let _ = write!(
                    h,
                    "<tr><td class=\"when\">{}</td><td>{}</td><td class=\"why\">{}</td><td class=\"why\">{}</td></tr>",
                    time(r.at),
                    esc(&service(&r.key)),
                    esc(&r.outcome),
                    esc(&r.why.join("; "))
                );
            }
            h.push_str("</table>");
        }
        h.push_str("<p>Refreshes every 10 s. The same facts: <a href=\"/metrics\">/metrics</a>, <a href=\"/readyz\">/readyz</a>.</p></body></html>\n");
        h
    }
}

fn service(key: &ServiceKey) -> String {
    if key.account.is_empty() {
        key.to_string()
    } else {
        format!("{key} ({} {})", key.account, key.region)
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Live {
        Live {
            leader: "this replica leads".into(),
            ready: "ready: leading".into(),
            in_flight: vec!["app/<db> (announced by api_call event e-1)".into()],
            busy: 1,
            now: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        }
    }

    fn pass_with(services: Vec<(&str, Decision)>) -> Pass {
        use crate::aws::{Controller, Service};
        let mut pass = Pass::empty(DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default());
        pass.assessment.services = services
            .into_iter()
            .map(|(name, decision)| crate::reconcile::Assessed {
                key: ServiceKey {
                    cluster: "prod".into(),
                    service: name.into(),
                    ..ServiceKey::default()
                },
                decision,
                secrets: vec![],
                service: Service {
                    arn: format!("arn:aws:ecs:eu-west-1:111122223333:service/prod/{name}"),
                    name: name.into(),
                    cluster_arn: "arn:aws:ecs:eu-west-1:111122223333:cluster/prod".into(),
                    status: "ACTIVE".into(),
                    task_definition: "td".into(),
                    desired_count: 1,
                    controller: Controller::Ecs,
                    shape: Default::default(),
                    deployments: vec![],
                    tags: Default::default(),
                },
            })
            .collect();
        pass
    }

    /// Found by review: a service a full resync no longer sees (deleted, or no longer
    /// resolving a changed value) leaves "Needs a person"; an event's pass leaves others alone.
    #[test]
    fn a_resync_prunes_what_it_no_longer_sees() {
        let board = Board::default();
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let pending = || Decision::Pending {
            reason: "notify-only: decided and reported, not rolled".into(),
            findings: vec![],
        };
        board.after_pass(
            &pass_with(vec![("billing", pending()), ("api", pending())]),
            now,
        );
        let page = board.render(&live());
        assert!(page.contains("prod/billing") && page.contains("prod/api"));
        let event_pass = pass_with(vec![("api", pending())]);
        board.after_pass(&event_pass, now);
        assert!(
            board.render(&live()).contains("prod/billing"),
            "an event's pass keeps the rest"
        );
        board.resynced(&event_pass);
        let page = board.render(&live());
        assert!(
            !page.contains("prod/billing") && page.contains("prod/api"),
            "{page}"
        );
        board.forget();
        assert!(!board.render(&live()).contains("prod/api"));
    }

    #[test]
    fn everything_shown_is_escaped_and_every_section_is_there() {
        let board = Board::default();
        let key = ServiceKey {
            cluster: "prod".into(),
            service: "api".into(),
            ..ServiceKey::default()
        };
        board.rollout(
            &key,
            &Phase::Done(Outcome::Failed {
                reason: "<script>alert(1)</script>".into(),
            }),
            &["app/db: announced by api_call event e-1 by arn:aws:sts::1:assumed-role/r/x".into()],
            DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        );
        let page = board.render(&live());
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("app/&lt;db&gt;"));
        for section in [
            "Leader:",
            "<h2>Targets</h2>",
            "<h2>Changes in flight</h2>",
            "<h2>Needs a person</h2>",
            "<h2>Last rollouts</h2>",
            "assumed-role/r/x",
            "http-equiv=\"refresh\"",
        ] {
            assert!(page.contains(section), "{section}: {page}");
        }
        assert_eq!(esc("a&b\"'"), "a&amp;b&quot;&#39;");
    }
}
