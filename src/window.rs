//! Maintenance windows: when rollouts may happen. Pure.
//!
//! A window is written `DAYS HH:MM-HH:MM ZONE`, e.g. `Mon-Fri 02:00-05:00 Europe/Berlin`:
//! - `DAYS`: a day (`Mon` … `Sun`), a range (`Mon-Fri`, `Fri-Mon` wraps), or several joined by
//!   `,` or `+` (`Mon+Wed+Fri`; ECS tag values cannot hold commas);
//! - the times are local wall-clock times in `ZONE` (an IANA name, or `UTC`); a window whose end
//!   is not after its start runs past midnight (`Sat 22:00-02:00` ends on Sunday). `DAYS` names
//!   the day a window *starts*;
//! - daylight saving is the time-zone database's business: a start that falls in a spring-forward
//!   gap begins when the clock jumps, and an ambiguous autumn time is taken at its first
//!   occurrence.
//!
//! Several windows are separated by `;` in the configuration (`[rollout] windows`); the service
//! tag `ecs-reloader/window` holds one window, or `any` to lift the configured ones for that
//! service.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The service tag that overrides `[rollout] windows` for one service.
pub(crate) const TAG_WINDOW: &str = "ecs-reloader/window";

/// Why a window could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "maintenance window {text:?}: {problem} (expected e.g. \"Mon-Fri 02:00-05:00 Europe/Berlin\")"
)]
pub struct WindowError {
    /// The text as given.
    pub text: String,
    /// What is wrong with it.
    pub problem: String,
}

/// One weekly window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    text: String,
    /// Monday first.
    days: [bool; 7],
    start: NaiveTime,
    end: NaiveTime,
    zone: Tz,
}

/// When rollouts may happen: any time, or within one of some windows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Windows(Vec<Window>);

/// Whether a rollout may happen now, and if not, when it next may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// Now.
    Open,
    /// At this moment, when the named window opens.
    At {
        /// When.
        start: DateTime<Utc>,
        /// The window, as written.
        window: String,
    },
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// A day by its name or its three-letter abbreviation, in any case: not any word that merely
/// starts like one (`Monkey` is a typo, and a typo must not silently open a window).
fn day(text: &str) -> Option<usize> {
    let t = text.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| t == *d || (t.len() == 3 && d.starts_with(t.as_str())))
}

fn parse_days(spec: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for part in spec.split([',', '+']) {
        let part = part.trim();
        if part.is_empty() {
            return Err("an empty day".into());
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (
                    day(a).ok_or_else(|| format!("{a:?} is not a day"))?,
                    day(b).ok_or_else(|| format!("{b:?} is not a day"))?,
                );
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(part).ok_or_else(|| format!("{part:?} is not a day"))?] = true,
        }
    }
    Ok(days)
}

fn parse_time(t: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| format!("{t:?} is not a time HH:MM"))
}

impl Window {
    /// Parses one window.
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let err = |problem: String| WindowError {
            text: text.to_string(),
            problem,
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days, times, zone] = parts[..] else {
            return Err(err(
                "expected three parts: days, times and a time zone".into()
            ));
        };
        let days = parse_days(days).map_err(err)?;
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| err(format!("{times:?} is not a range HH:MM-HH:MM")))?;
        let start = parse_time(start).map_err(err)?;
        let end = parse_time(end).map_err(err)?;
        if start == end {
            return Err(err("the window is empty (start = end)".into()));
        }
        let zone: Tz = zone
            .parse()
            .map_err(|_| err(format!("{zone:?} is not an IANA time zone")))?;
        Ok(Window {
            text: parts.join(" "),
            days,
            start,
            end,
            zone,
        })
    }

    /// A local wall-clock time as an instant: a time in a spring-forward gap is taken when the
    /// clock jumps past the gap (the first valid local time after it), an ambiguous one at its
    /// first occurrence.
    fn instant(&self, date: NaiveDate, time: NaiveTime) -> Option<DateTime<Utc>> {
        let local = date.and_time(time);
        // Gaps are at most a few hours; a minute's steps find their end exactly.
        for minutes in 0..=240 {
            let t = local + Duration::minutes(minutes);
            match self.zone.from_local_datetime(&t) {
                LocalResult::Single(x) | LocalResult::Ambiguous(x, _) => {
                    let x = x.with_timezone(&Utc);
                    // Within the gap, the jump's moment: the valid time's own minute boundary.
                    return Some(if minutes == 0 {
                        x
                    } else {
                        x - Duration::seconds(x.timestamp().rem_euclid(60))
                    });
                }
                LocalResult::None => continue,
            }
        }
        None
    }

    /// The window's written length (past midnight when the end is not after the start).
    fn length(&self) -> Duration {
        let d = self.end - self.start;
        if d > Duration::zero() {
            d
        } else {
            d + Duration::days(1)
        }
    }

    /// The occurrences (start, end) whose start falls on a local date near `now`.
    fn occurrences(
        &self,
        now: DateTime<Utc>,
    ) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + '_ {
        let today = now.with_timezone(&self.zone).date_naive();
        (-1..=8).filter_map(move |offset| {
            let date = today + Duration::days(offset);
            if !self.days[date.weekday().num_days_from_monday() as usize] {
                return None;
            }
            let start = self.instant(date, self.start)?;
            let end_date = if self.end > self.start {
                date
            } else {
                date + Duration::days(1)
            };
            let end = self.instant(end_date, self.end)?;
            // A window (or its end) inside a spring-forward gap would be empty: it keeps its
            // written length from when the clock jumps instead.
            let end = if end > start {
                end
            } else {
                start + self.length()
            };
            Some((start, end))
        })
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Written as the text it was read from, windows joined by `; ` (how `[rollout] windows` and its
/// environment variable spell them).
impl serde::Serialize for Windows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<&str> = self.0.iter().map(|w| w.text.as_str()).collect();
        s.serialize_str(&texts.join("; "))
    }
}

/// Parsed as the configuration is read, so that a bad window is an error naming its key and line
/// there, and nothing later parses the text again.
impl<'de> serde::Deserialize<'de> for Windows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        Windows::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Windows {
    /// No restriction: rollouts may happen any time.
    pub fn any() -> Self {
        Windows(Vec::new())
    }

    /// Parses `;`-separated windows; empty text means any time.
    pub fn parse(text: &str) -> Result<Windows, WindowError> {
        text.split(';')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(Window::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Windows)
    }

    /// Parses a service's tag value: one window, or `any`.
    pub(crate) fn parse_tag(text: &str) -> Result<Windows, WindowError> {
        if text.trim().eq_ignore_ascii_case("any") {
            return Ok(Windows::any());
        }
        Window::parse(text).map(|w| Windows(vec![w]))
    }

    /// Whether there is no restriction.
    pub(crate) fn is_any(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a rollout may happen at `now`, and if not, when next.
    pub fn opening(&self, now: DateTime<Utc>) -> Opening {
        if self.is_any() {
            return Opening::Open;
        }
        let mut next: Option<(DateTime<Utc>, &Window)> = None;
        for w in &self.0 {
            for (start, end) in w.occurrences(now) {
                if start <= now && now < end {
                    return Opening::Open;
                }
                if start > now && next.is_none_or(|(n, _)| start < n) {
                    next = Some((start, w));
                }
            }
        }
        match next {
            Some((start, w)) => Opening::At {
                start,
                window: w.to_string(),
            },
            // Every window is weekly, so one always opens within eight days; this is unreachable
            // short of a zone whose every local time is a gap.
            None => Opening::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn at(w: &Windows, now: &str) -> Opening {
        w.opening(utc(now))
    }

    #[test]
    fn weekday_windows_in_a_time_zone() {
        let w = Windows::parse("Mon-Fri 02:00-05:00 Europe/Berlin").expect("parses");
        // Tuesday 2026-11-24, 02:30 in Berlin (CET, UTC+1) is 01:30 UTC.
        assert_eq!(at(&w, "2026-11-24T01:30:00Z"), Opening::Open);
        // 05:00 Berlin is the end: closed, next Wednesday 02:00 Berlin = 01:00 UTC.
        assert_eq!(
            at(&w, "2026-11-24T04:00:00Z"),
            Opening::At {
                start: utc("2026-11-25T01:00:00Z"),
                window: "Mon-Fri 02:00-05:00 Europe/Berlin".into()
            }
        );
        // Friday evening: next is Monday.
        assert_eq!(
            at(&w, "2026-11-27T20:00:00Z"),
            Opening::At {
                start: utc("2026-11-30T01:00:00Z"),
                window: "Mon-Fri 02:00-05:00 Europe/Berlin".into()
            }
        );
    }

    #[test]
    fn summer_time_moves_the_window_in_utc() {
        let w = Windows::parse("Mon-Fri 02:00-05:00 Europe/Berlin").expect("parses");
        // In July Berlin is UTC+2: 02:00 local is 00:00 UTC.
        assert_eq!(at(&w, "2026-07-07T00:30:00Z"), Opening::Open);
        assert!(matches!(at(&w, "2026-07-07T03:30:00Z"), Opening::At { .. }));
    }

    #[test]
    fn a_start_in_the_spring_forward_gap_begins_when_the_clock_jumps() {
        // 2026-03-29: Berlin jumps from 02:00 to 03:00 (01:00 UTC).
        let w = Windows::parse("Sun 02:30-04:00 Europe/Berlin").expect("parses");
        assert_eq!(
            at(&w, "2026-03-28T12:00:00Z"),
            Opening::At {
                start: utc("2026-03-29T01:00:00Z"),
                window: "Sun 02:30-04:00 Europe/Berlin".into()
            }
        );
        assert_eq!(at(&w, "2026-03-29T01:10:00Z"), Opening::Open);
    }

    #[test]
    fn past_midnight_and_day_lists() {
        let w = Windows::parse("Sat 22:00-02:00 UTC").expect("parses");
        assert_eq!(
            at(&w, "2026-11-29T01:00:00Z"),
            Opening::Open,
            "Sunday 01:00"
        );
        assert!(matches!(at(&w, "2026-11-29T02:00:00Z"), Opening::At { .. }));
        let w = Windows::parse("Mon+Wed 10:00-11:00 UTC; Sun 00:00-01:00 America/New_York")
            .expect("parses");
        assert_eq!(at(&w, "2026-11-25T10:30:00Z"), Opening::Open, "Wednesday");
        assert_eq!(
            at(&w, "2026-11-26T10:30:00Z"),
            Opening::At {
                // Sunday 00:00 in New York (EST, UTC-5) comes before Monday 10:00 UTC.
                start: utc("2026-11-29T05:00:00Z"),
                window: "Sun 00:00-01:00 America/New_York".into()
            },
            "Thursday"
        );
        let wrap = Windows::parse("Fri-Mon 00:00-23:59 UTC").expect("parses");
        assert_eq!(at(&wrap, "2026-11-30T12:00:00Z"), Opening::Open, "Monday");
        assert!(matches!(
            at(&wrap, "2026-11-25T12:00:00Z"),
            Opening::At { .. }
        ));
    }

    #[test]
    fn any_time_and_tags() {
        assert!(Windows::parse("").expect("empty").is_any());
        assert_eq!(Windows::any().opening(Utc::now()), Opening::Open);
        assert!(Windows::parse_tag("ANY").expect("any").is_any());
        assert!(!Windows::parse_tag("Sun 00:00-01:00 UTC")
            .expect("one")
            .is_any());
    }

    #[test]
    fn windows_read_and_write_as_their_text() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Holder {
            windows: Windows,
        }
        let text = "windows = \"Mon+Wed 10:00-11:00 UTC;  Sun 00:00-01:00   America/New_York\"";
        let h: Holder = toml::from_str(text).expect("reads");
        assert_eq!(
            h.windows,
            Windows::parse("Mon+Wed 10:00-11:00 UTC; Sun 00:00-01:00 America/New_York")
                .expect("parses")
        );
        let written = toml::to_string(&h).expect("writes");
        assert_eq!(
            written.trim(),
            "windows = \"Mon+Wed 10:00-11:00 UTC; Sun 00:00-01:00 America/New_York\""
        );
        let back: Holder = toml::from_str(&written).expect("reads back");
        assert_eq!(back.windows, h.windows);
        let err = toml::from_str::<Holder>("windows = \"Mon-Fry 02:00-05:00 UTC\"")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"Fry\" is not a day"), "{err}");
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, says) in [
            ("Mon-Fri 02:00-05:00", "three parts"),
            ("Mon-Fry 02:00-05:00 UTC", "\"Fry\" is not a day"),
            ("Mon 2am-5am UTC", "is not a time"),
            ("Mon 02:00 UTC", "is not a range"),
            ("Mon 02:00-02:00 UTC", "empty"),
            ("Mon 02:00-05:00 Mars/Olympus", "not an IANA time zone"),
        ] {
            let e = Windows::parse(text).expect_err(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.contains(text), "{e}");
        }
    }

    /// A day is its name (`Mon`, `Monday`, any case), not any word that starts like one: a typo
    /// such as `Monkey` must not silently open a Monday window.
    #[test]
    fn a_word_that_only_starts_like_a_day_is_not_a_day() {
        for (name, index) in [("Monday", 0), ("mon", 0), ("SUNDAY", 6), ("thursday", 3)] {
            assert_eq!(super::day(name), Some(index), "{name}");
        }
        assert!(Windows::parse("Tue-thursday 02:00-05:00 UTC").is_ok());
        for text in [
            "Monkey 02:00-05:00 UTC",
            "Month 02:00-05:00 UTC",
            "Sunshine 02:00-05:00 UTC",
            "Mon-Frisbee 02:00-05:00 UTC",
        ] {
            assert!(
                Windows::parse(text).is_err(),
                "{text:?} read as {:?}",
                Windows::parse(text)
            );
        }
    }
}
