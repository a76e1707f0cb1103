//! The task form: its fields (named as the API names them, so a [`FieldError`] lands next to
//! the field it names), and its conversion to a [`Task`] or a [`TaskUpdate`].

use std::collections::BTreeMap;

use ferry_common::task::{FieldError, Task, TaskUpdate};
use serde_json::{json, Map, Value};

pub struct Field {
    /// The API's field path (`Options.BytesPerSecond`), also the form field's name.
    pub name: &'static str,
    pub label: &'static str,
    pub hint: &'static str,
    /// A select's values ("" for the default); empty for a text input.
    pub choices: &'static [&'static str],
    /// Fixed once the task exists (the API cannot change it).
    pub create_only: bool,
}

pub const FIELDS: [Field; 8] = [
    Field { name: "Name", label: "Name", hint: "Letters, digits, '-', '_' and '.'; at most 64 characters.", choices: &[], create_only: true },
    Field { name: "SourceLocation", label: "Source", hint: "An absolute path (/data) or s3://bucket/prefix.", choices: &[], create_only: true },
    Field { name: "DestinationLocation", label: "Destination", hint: "An absolute path or s3://bucket/prefix.", choices: &[], create_only: true },
    Field { name: "Options.BytesPerSecond", label: "Bytes per second", hint: "Per agent; -1 or empty for unlimited.", choices: &[], create_only: false },
    Field {
        name: "Options.VerifyMode",
        label: "Verify mode",
        hint: "What is read back and compared after the transfer.",
        choices: &["", "ONLY_FILES_TRANSFERRED", "POINT_IN_TIME_CONSISTENT", "NONE"],
        create_only: false,
    },
    Field {
        name: "Schedule.ScheduleExpression",
        label: "Schedule",
        hint: "Cron: minute hour day-of-month month day-of-week (0 2 * * * is 02:00 daily). Empty: none (an existing schedule is kept; disable it instead).",
        choices: &[],
        create_only: false,
    },
    Field { name: "Schedule.TimeZone", label: "Time zone", hint: "An IANA time zone (Europe/Paris); empty for UTC.", choices: &[], create_only: false },
    Field {
        name: "TaskReportConfig.Destination",
        label: "Report destination",
        hint: "A directory for the per-execution report of failed entries; empty for none.",
        choices: &[],
        create_only: false,
    },
];

/// What a user typed, and the error to show with it.
#[derive(Default)]
pub struct TaskForm {
    values: BTreeMap<String, String>,
    error: Option<FieldError>,
}

impl TaskForm {
    /// The known fields of a submitted form (the rest, such as `csrf`, are ignored).
    pub fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut values = BTreeMap::new();
        for (k, v) in pairs {
            if FIELDS.iter().any(|f| f.name == k) {
                values.insert(k.clone(), v.trim().to_string());
            }
        }
        TaskForm { values, error: None }
    }

    /// The form showing task `t` as it is.
    pub fn of(t: &Task) -> Self {
        let mut values = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                values.insert(k.to_string(), v);
            }
        };
        put("Name", Some(t.name.clone()));
        put("SourceLocation", Some(t.source_location.clone()));
        put("DestinationLocation", Some(t.destination_location.clone()));
        put("Options.BytesPerSecond", t.options.bytes_per_second.map(|b| b.to_string()));
        put("Options.VerifyMode", t.options.verify_mode.map(|v| v.as_str().to_string()));
        put("Schedule.ScheduleExpression", t.schedule.as_ref().map(|s| s.schedule_expression.clone()));
        put("Schedule.TimeZone", t.schedule.as_ref().and_then(|s| s.time_zone.clone()));
        put("TaskReportConfig.Destination", t.task_report_config.as_ref().map(|r| r.destination.clone()));
        TaskForm { values, error: None }
    }

    pub fn with_error(mut self, e: FieldError) -> Self {
        self.error = Some(e);
        self
    }

    pub fn value(&self, name: &str) -> &str {
        self.values.get(name).map(String::as_str).unwrap_or("")
    }

    fn given(&self, name: &str) -> Option<&str> {
        Some(self.value(name)).filter(|v| !v.is_empty())
    }

    /// The error's message when it names field `name`, or a field inside it
    /// (`Schedule.ScheduleExpression` for an error about `Schedule`).
    pub fn error_for(&self, name: &str) -> Option<String> {
        let e = self.error.as_ref()?;
        let f = e.field();
        let here = f == name || (name.starts_with(f) && name.as_bytes().get(f.len()) == Some(&b'.') && self.placed_first(f) == Some(name));
        here.then(|| e.to_string())
    }

    /// The first form field inside API field `f`, where an error about `f` is shown.
    fn placed_first(&self, f: &str) -> Option<&'static str> {
        FIELDS.iter().map(|x| x.name).find(|n| *n == f || (n.starts_with(f) && n.as_bytes().get(f.len()) == Some(&b'.')))
    }

    /// The error, when it names no field of this form (it is shown above the form).
    pub fn unplaced_error(&self) -> Option<String> {
        let e = self.error.as_ref()?;
        self.placed_first(e.field()).is_none().then(|| e.to_string())
    }

    fn options(&self) -> Result<Map<String, Value>, FieldError> {
        let mut o = Map::new();
        if let Some(b) = self.given("Options.BytesPerSecond") {
            let n: i64 = b.parse().map_err(|_| {
                FieldError::invalid("Options.BytesPerSecond", format!("{b:?} is not a whole number: give bytes per second, or -1 for unlimited"))
            })?;
            o.insert("BytesPerSecond".into(), json!(n));
        }
        if let Some(v) = self.given("Options.VerifyMode") {
            o.insert("VerifyMode".into(), json!(v));
        }
        Ok(o)
    }

    fn schedule(&self, status: Option<&str>) -> Option<Value> {
        let expr = self.given("Schedule.ScheduleExpression")?;
        let mut s = json!({ "ScheduleExpression": expr });
        if let Some(tz) = self.given("Schedule.TimeZone") {
            s["TimeZone"] = json!(tz);
        }
        if let Some(st) = status {
            s["Status"] = json!(st);
        }
        Some(s)
    }

    fn report(&self) -> Option<Value> {
        self.given("TaskReportConfig.Destination").map(|d| json!({ "Destination": d }))
    }

    /// The task to create; its validation is the control plane's.
    pub fn to_task(&self) -> Result<Task, FieldError> {
        let mut t = json!({
            "Name": self.value("Name"),
            "SourceLocation": self.value("SourceLocation"),
            "DestinationLocation": self.value("DestinationLocation"),
            "Options": self.options()?,
        });
        if let Some(s) = self.schedule(None) {
            t["Schedule"] = s;
        }
        if let Some(r) = self.report() {
            t["TaskReportConfig"] = r;
        }
        serde_json::from_value(t).map_err(|e| FieldError::invalid("Task", e.to_string()))
    }

    /// The update of an existing task: what the form sets. A schedule keeps the status
    /// `current` had (the form changes its expression, not whether it runs).
    pub fn to_update(&self, current: &Task) -> Result<TaskUpdate, FieldError> {
        let mut u = json!({ "Options": self.options()? });
        let status = current.schedule.as_ref().map(|s| s.status.as_str());
        if let Some(s) = self.schedule(status) {
            u["Schedule"] = s;
        }
        if let Some(r) = self.report() {
            u["TaskReportConfig"] = r;
        }
        serde_json::from_value(u).map_err(|e| FieldError::invalid("Task", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> TaskForm {
        TaskForm::from_pairs(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
    }

    #[test]
    fn a_form_becomes_the_task_the_api_would_get() {
        let f = form(&[
            ("csrf", "x"),
            ("Name", "nightly"),
            ("SourceLocation", " /src "),
            ("DestinationLocation", "/dst"),
            ("Options.BytesPerSecond", "1048576"),
            ("Options.VerifyMode", ""),
            ("Schedule.ScheduleExpression", "0 2 * * *"),
            ("TaskReportConfig.Destination", "/reports"),
        ]);
        let t = f.to_task().unwrap();
        assert_eq!((t.name.as_str(), t.source_location.as_str()), ("nightly", "/src"));
        assert_eq!(t.options.bytes_per_second, Some(1048576));
        assert_eq!(t.options.verify_mode, None, "left to the default");
        assert_eq!(t.schedule.unwrap().schedule_expression, "0 2 * * *");
        assert_eq!(t.task_report_config.unwrap().destination, "/reports");
        let back = TaskForm::of(&f.to_task().unwrap());
        assert_eq!(back.value("Options.BytesPerSecond"), "1048576");
    }

    #[test]
    fn errors_land_next_to_the_field_they_name() {
        let e = form(&[("Options.BytesPerSecond", "fast")]).to_task().unwrap_err();
        assert_eq!(e.field(), "Options.BytesPerSecond");
        let f = form(&[]).with_error(FieldError::invalid("SourceLocation", "is empty"));
        assert_eq!(f.error_for("SourceLocation").as_deref(), Some("SourceLocation: is empty"));
        assert_eq!(f.error_for("DestinationLocation"), None);
        assert_eq!(f.unplaced_error(), None);
        // An error about a group goes to its first field.
        let f = form(&[]).with_error(FieldError::invalid("Schedule", "bad"));
        assert!(f.error_for("Schedule.ScheduleExpression").is_some() && f.error_for("Schedule.TimeZone").is_none());
        // One the form has no field for goes above it.
        let f = form(&[]).with_error(FieldError::invalid("Options.Atime", "needs VerifyMode"));
        assert_eq!(f.unplaced_error().as_deref(), Some("Options.Atime: needs VerifyMode"));
        assert!(FIELDS.iter().all(|x| f.error_for(x.name).is_none()));
    }

    #[test]
    fn an_update_keeps_the_schedules_status() {
        let mut t =
            form(&[("Name", "n"), ("SourceLocation", "/a"), ("DestinationLocation", "/b"), ("Schedule.ScheduleExpression", "0 2 * * *")]).to_task().unwrap();
        t.schedule.as_mut().unwrap().status = ferry_common::task::ScheduleStatus::Disabled;
        let u = form(&[("Schedule.ScheduleExpression", "0 3 * * *")]).to_update(&t).unwrap();
        let s = u.schedule.unwrap();
        assert_eq!((s.schedule_expression.as_str(), s.status.as_str()), ("0 3 * * *", "DISABLED"));
        assert!(form(&[]).to_update(&t).unwrap().schedule.is_none(), "an empty schedule keeps the current one");
    }
}
