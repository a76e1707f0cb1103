//! Schedules: cron expressions, and the pure decision of when a schedule fires.
//!
//! # Expressions
//! Five fields, `minute hour day-of-month month day-of-week`, as in crontab (`0 2 * * *` is
//! 02:00 every day, `30 1 * * SUN` is 01:30 on Sundays). They are read in the task's time zone,
//! UTC unless one is given, so a schedule follows daylight-saving changes the way a local
//! crontab does.
//!
//! # Missed runs
//! When no coordinator was up at a firing time (or the leader changed at that moment), the
//! next leader looks at the slots it missed. It coalesces them into one execution for the
//! latest missed slot if that slot is less than [`FirePolicy::catch_up_ms`] old, and skips
//! them otherwise (recording a ScheduleMissed event). A backlog never starts a burst of runs.
//!
//! # Exactly once
//! [`decide`] is pure; the caller stores the slot it fired in [`ScheduleState::last_slot_ms`]
//! with a compare-and-swap in the same transaction that creates the execution, so two leaders
//! that both decide to fire the same slot create one execution.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::task::{FieldError, SchedulePolicy};

#[derive(Clone, Debug)]
pub struct CronSchedule {
    schedule: cron::Schedule,
    tz: Tz,
}

impl CronSchedule {
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Self, FieldError> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(FieldError::invalid(
                "Schedule.ScheduleExpression",
                format!("{expr:?} has {} fields; give five: minute hour day-of-month month day-of-week (e.g. '0 2 * * *')", fields.len()),
            ));
        }
        // The cron crate wants seconds first (and an optional year last).
        let schedule = cron::Schedule::from_str(&format!("0 {}", fields.join(" ")))
            .map_err(|e| FieldError::invalid("Schedule.ScheduleExpression", format!("{expr:?} is not a cron expression: {e}")))?;
        let tz = match time_zone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                FieldError::invalid("Schedule.TimeZone", format!("{name:?} is not an IANA time zone (e.g. UTC, Europe/Paris, America/New_York)"))
            })?,
        };
        if schedule.after(&Utc::now().with_timezone(&tz)).next().is_none() {
            return Err(FieldError::invalid("Schedule.ScheduleExpression", format!("{expr:?} never fires again")));
        }
        Ok(CronSchedule { schedule, tz })
    }

    /// The first firing strictly after `after_ms` (Unix milliseconds).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let at: DateTime<Utc> = Utc.timestamp_millis_opt(after_ms as i64).single()?;
        self.schedule.after(&at.with_timezone(&self.tz)).next().map(|t| t.timestamp_millis() as u64)
    }

    /// Refuses schedules that fire more often than the policy allows, judged on the next 100
    /// firings (which covers every pattern that repeats within a day, and most within a week).
    pub fn check_interval(&self, policy: &SchedulePolicy) -> Result<(), FieldError> {
        let min_ms = policy.min_interval_secs * 1000;
        let mut prev = match self.next_after(now_ms()) {
            Some(p) => p,
            None => return Ok(()),
        };
        for _ in 0..100 {
            let Some(next) = self.next_after(prev) else {
                break;
            };
            if next - prev < min_ms {
                return Err(FieldError::unprocessable(
                    "Schedule.ScheduleExpression",
                    format!(
                        "fires {}s apart, more often than the minimum interval of {}s (the coordinator's --min-schedule-interval)",
                        (next - prev) / 1000,
                        policy.min_interval_secs
                    ),
                ));
            }
            prev = next;
        }
        Ok(())
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the leader keeps per scheduled task (`/ferry/v1/sched/{task}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleState {
    /// The expression and zone `next_slot_ms` was computed for; a changed schedule re-arms.
    pub armed_for: String,
    /// The next slot to fire.
    pub next_slot_ms: Option<u64>,
    /// The last slot fired (or skipped), so no slot is handled twice.
    pub last_slot_ms: Option<u64>,
    /// Executions started by this schedule that ended in ERROR in a row, with the same error.
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirePolicy {
    /// A missed slot younger than this still runs (once); older ones are skipped.
    pub catch_up_ms: u64,
    /// A schedule disables itself after this many consecutive failures with the same error.
    pub disable_after_failures: u32,
}

impl Default for FirePolicy {
    fn default() -> Self {
        FirePolicy { catch_up_ms: 3_600_000, disable_after_failures: 3 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do before `next_slot_ms`.
    Wait,
    /// Store this state (first arming, or re-arming after a schedule change).
    Arm { next_slot_ms: u64 },
    /// Start an execution for `slot_ms`; `missed` earlier slots were coalesced into it.
    Fire { slot_ms: u64, missed: u32, next_slot_ms: Option<u64> },
    /// The latest due slot is too old to run: skip to the next one.
    Skip { slot_ms: u64, missed: u32, next_slot_ms: Option<u64> },
}

/// The identity of a schedule's timing: a change of expression or zone re-arms it.
pub fn arm_key(expr: &str, tz: Option<&str>) -> String {
    format!("{expr}@{}", tz.unwrap_or("UTC"))
}

/// Decides what an enabled schedule does at `now_ms`.
pub fn decide(cron: &CronSchedule, key: &str, state: &ScheduleState, now_ms: u64, policy: &FirePolicy) -> Decision {
    let next = match state.next_slot_ms {
        Some(n) if state.armed_for == key => n,
        // New or changed: the first slot is the next one after now, never one in the past.
        _ => return cron.next_after(now_ms).map_or(Decision::Wait, |n| Decision::Arm { next_slot_ms: n }),
    };
    if now_ms < next {
        return Decision::Wait;
    }
    // Walk to the latest slot that is due, counting the ones passed over. Bounded: a minimum
    // interval of minutes over a long outage is at most a few hundred thousand steps, and the
    // walk stops early once it reaches now.
    let mut latest = next;
    let mut missed = 0u32;
    while let Some(n) = cron.next_after(latest) {
        if n > now_ms {
            break;
        }
        latest = n;
        missed = missed.saturating_add(1);
    }
    let next_slot_ms = cron.next_after(now_ms);
    if now_ms - latest <= policy.catch_up_ms {
        Decision::Fire { slot_ms: latest, missed, next_slot_ms }
    } else {
        Decision::Skip { slot_ms: latest, missed, next_slot_ms }
    }
}

/// Folds the outcome of one scheduled execution into the state; returns true when the
/// schedule must now be disabled.
pub fn record_outcome(state: &mut ScheduleState, error: Option<&str>, policy: &FirePolicy) -> bool {
    match error {
        None => {
            state.consecutive_failures = 0;
            state.last_error = None;
            false
        }
        Some(e) => {
            if state.last_error.as_deref() == Some(e) {
                state.consecutive_failures += 1;
            } else {
                state.consecutive_failures = 1;
                state.last_error = Some(e.to_string());
            }
            policy.disable_after_failures > 0 && state.consecutive_failures >= policy.disable_after_failures
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    /// 2026-01-01T00:00:00Z
    const T0: u64 = 1_767_225_600_000;

    fn hourly() -> CronSchedule {
        CronSchedule::parse("0 * * * *", None).unwrap()
    }

    #[test]
    fn expressions_are_checked_with_the_field_named() {
        assert_eq!(CronSchedule::parse("0 2 * *", None).unwrap_err().field(), "Schedule.ScheduleExpression");
        assert_eq!(CronSchedule::parse("0 25 * * *", None).unwrap_err().field(), "Schedule.ScheduleExpression");
        assert_eq!(CronSchedule::parse("0 2 * * *", Some("Mars/Olympus")).unwrap_err().field(), "Schedule.TimeZone");
        let every_minute = CronSchedule::parse("* * * * *", None).unwrap();
        assert!(every_minute.check_interval(&SchedulePolicy { min_interval_secs: 3600 }).is_err());
        assert!(every_minute.check_interval(&SchedulePolicy { min_interval_secs: 60 }).is_ok());
    }

    #[test]
    fn time_zones_shift_the_slots() {
        let utc = CronSchedule::parse("0 2 * * *", None).unwrap();
        let paris = CronSchedule::parse("0 2 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(utc.next_after(T0), Some(T0 + 2 * HOUR));
        assert_eq!(paris.next_after(T0), Some(T0 + HOUR), "02:00 in Paris is 01:00 UTC in winter");
    }

    #[test]
    fn arms_then_fires_once_per_slot() {
        let c = hourly();
        let key = arm_key("0 * * * *", None);
        let policy = FirePolicy::default();
        let mut st = ScheduleState::default();
        assert_eq!(decide(&c, &key, &st, T0 + 10 * MIN, &policy), Decision::Arm { next_slot_ms: T0 + HOUR });
        st.armed_for = key.clone();
        st.next_slot_ms = Some(T0 + HOUR);
        assert_eq!(decide(&c, &key, &st, T0 + 59 * MIN, &policy), Decision::Wait);
        assert_eq!(decide(&c, &key, &st, T0 + HOUR, &policy), Decision::Fire { slot_ms: T0 + HOUR, missed: 0, next_slot_ms: Some(T0 + 2 * HOUR) });
        st.next_slot_ms = Some(T0 + 2 * HOUR);
        assert_eq!(decide(&c, &key, &st, T0 + HOUR + 1, &policy), Decision::Wait);
    }

    #[test]
    fn missed_slots_coalesce_into_one_run_or_are_skipped_when_too_old() {
        let c = hourly();
        let key = arm_key("0 * * * *", None);
        let st = ScheduleState { armed_for: key.clone(), next_slot_ms: Some(T0 + HOUR), ..Default::default() };
        let policy = FirePolicy { catch_up_ms: 30 * MIN, disable_after_failures: 3 };
        // Down from before 01:00 until 05:10: slots 01..05 missed; 05:00 is 10 minutes old.
        assert_eq!(
            decide(&c, &key, &st, T0 + 5 * HOUR + 10 * MIN, &policy),
            Decision::Fire { slot_ms: T0 + 5 * HOUR, missed: 4, next_slot_ms: Some(T0 + 6 * HOUR) }
        );
        // Until 05:40: 05:00 is 40 minutes old, past the catch-up window.
        assert_eq!(
            decide(&c, &key, &st, T0 + 5 * HOUR + 40 * MIN, &policy),
            Decision::Skip { slot_ms: T0 + 5 * HOUR, missed: 4, next_slot_ms: Some(T0 + 6 * HOUR) }
        );
    }

    #[test]
    fn a_changed_expression_rearms() {
        let c = CronSchedule::parse("30 * * * *", None).unwrap();
        let st = ScheduleState { armed_for: arm_key("0 * * * *", None), next_slot_ms: Some(T0), ..Default::default() };
        assert_eq!(
            decide(&c, &arm_key("30 * * * *", None), &st, T0 + 5 * HOUR, &FirePolicy::default()),
            Decision::Arm { next_slot_ms: T0 + 5 * HOUR + 30 * MIN }
        );
    }

    #[test]
    fn repeated_identical_failures_disable() {
        let policy = FirePolicy { catch_up_ms: 0, disable_after_failures: 3 };
        let mut st = ScheduleState::default();
        assert!(!record_outcome(&mut st, Some("source missing"), &policy));
        assert!(!record_outcome(&mut st, Some("other error"), &policy), "a different error restarts the count");
        assert!(!record_outcome(&mut st, Some("other error"), &policy));
        assert!(!record_outcome(&mut st, None, &policy), "a success resets");
        assert!(!record_outcome(&mut st, Some("x"), &policy));
        assert!(!record_outcome(&mut st, Some("x"), &policy));
        assert!(record_outcome(&mut st, Some("x"), &policy));
    }
}
