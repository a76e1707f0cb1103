//! The console's pages and fragments: pure functions from what the control plane returns to
//! HTML. Every string that came from a user, a path or the Store goes through [`esc`].

use std::fmt::Write;

use ferry_common::task::Task;

use super::html::{bytes, csrf_field, duration, esc, notice, page, time, url_seg, Frame};
use super::tasks::{TaskForm, FIELDS};
use crate::api::views::{AgentView, EventView, ExecutionView};

fn frame<'a>(title: &'a str, nav: &'a str, csrf: &'a str) -> Frame<'a> {
    Frame { title, nav, csrf: Some(csrf), live: false }
}

fn phase_badge(phase: &str) -> String {
    format!(r#"<span class="phase phase-{0}">{0}</span>"#, esc(phase))
}

pub fn login(error: Option<&str>) -> String {
    let mut b = String::from(r#"<div class="login"><h1>ferry console</h1>"#);
    if let Some(e) = error {
        b.push_str(&notice("error", e));
    }
    b.push_str(
        r#"<form method="post" action="/login" class="stack"><label for="token">API token</label><input type="password" id="token" name="token" autocomplete="current-password" autofocus required><p class="hint">A token from the coordinator's --api-token-file.</p><div class="actions"><button>Log in</button></div></form></div>"#,
    );
    page(&Frame { title: "Log in", nav: "", csrf: None, live: false }, &b)
}

/// A page that says what went wrong and where to go, for errors outside a form. `csrf` is
/// None when the request's session or form is in doubt (no logout form is offered then).
pub fn problem(csrf: Option<&str>, title: &str, message: &str) -> String {
    let b = format!(r#"<h1>{}</h1>{}<p><a href="/console/executions">Back to executions</a></p>"#, esc(title), notice("error", message));
    page(&Frame { title, nav: "", csrf, live: false }, &b)
}

pub fn executions(csrf: &str, list: &[ExecutionView], task: Option<&str>) -> String {
    let mut b = match task {
        Some(t) => format!(r#"<h1>Executions of {}</h1><p><a href="/console/executions">All executions</a></p>"#, esc(t)),
        None => String::from("<h1>Executions</h1>"),
    };
    if list.is_empty() {
        b.push_str(r#"<p class="note">No executions yet: start one from a <a href="/console/tasks">task</a>.</p>"#);
    } else {
        b.push_str(r#"<table><thead><tr><th>Execution</th><th>Task</th><th>Status</th><th>Started</th><th class="num">Files</th><th class="num">Bytes</th><th class="num">Failed</th></tr></thead><tbody>"#);
        for e in list.iter().rev() {
            let task = e.task_name.as_deref().map(|t| format!(r#"<a href="/console/tasks/{}">{}</a>"#, url_seg(t), esc(t))).unwrap_or_else(|| "-".into());
            let c = &e.counters;
            let _ = write!(
                b,
                r#"<tr><td><a class="mono" href="/console/executions/{}">{}</a></td><td>{task}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
                url_seg(&e.execution_id),
                esc(&e.execution_id),
                phase_badge(&e.status),
                time(e.start_time_unix_ms),
                c.files_transferred,
                bytes(c.bytes_transferred),
                c.files_failed + c.files_mismatched,
            );
        }
        b.push_str("</tbody></table>");
    }
    page(&frame("Executions", "executions", csrf), &b)
}

/// An inline SVG line of the throughput samples (bytes per second, oldest first).
pub fn sparkline(rates: &[f64]) -> String {
    const W: f64 = 300.0;
    const H: f64 = 60.0;
    if rates.len() < 2 {
        return r#"<p class="note" id="throughput">Throughput: collecting samples…</p>"#.into();
    }
    let max = rates.iter().cloned().fold(0.0, f64::max).max(1.0);
    let step = W / (rates.len() - 1) as f64;
    let points: Vec<String> = rates.iter().enumerate().map(|(i, r)| format!("{:.1},{:.1}", i as f64 * step, H - 2.0 - (r / max) * (H - 4.0))).collect();
    format!(
        r#"<div id="throughput"><svg class="spark" viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-label="throughput, peak {peak}/s"><polyline points="{}"/></svg><p class="note">Throughput over the last {} s; now {}/s, peak {peak}/s</p></div>"#,
        points.join(" "),
        rates.len(),
        bytes(*rates.last().unwrap_or(&0.0) as u64),
        peak = bytes(max as u64),
    )
}

/// The live part of an execution's page, sent again over SSE every second: status, progress,
/// phases, counters, throughput, and the Cancel button while it runs.
pub fn progress(csrf: &str, e: &ExecutionView, summary: &str, rates: &[f64]) -> String {
    let mut b = String::with_capacity(4096);
    let terminal = matches!(e.status.as_str(), "SUCCESS" | "ERROR" | "CANCELLED");
    let _ = write!(b, r#"<p>Status: <strong id="status" class="phase phase-{0}">{0}</strong></p>"#, esc(&e.status));
    if let Some(err) = &e.error {
        b.push_str(&notice("error", err));
    }
    let c = &e.counters;
    let (done, total) = if c.bytes_prepared > 0 { (c.bytes_transferred, c.bytes_prepared) } else { (c.files_transferred, c.files_prepared.max(1)) };
    let _ = write!(b, r#"<progress value="{}" max="{}"></progress><p class="summary" id="summary">{}</p>"#, done.min(total), total, esc(summary));
    b.push_str(&sparkline(rates));
    if !terminal {
        let _ = write!(
            b,
            r#"<form method="post" action="/console/executions/{}/cancel" class="inline">{}<button class="danger" id="cancel">Cancel execution</button></form>"#,
            url_seg(&e.execution_id),
            csrf_field(csrf)
        );
    }
    b.push_str(r#"<div class="grid"><div><h2>Phases</h2><table><thead><tr><th>Phase</th><th>Status</th><th class="num">Duration</th></tr></thead><tbody>"#);
    for p in &e.phases {
        let _ = write!(b, r#"<tr><td>{}</td><td>{}</td><td class="num">{}</td></tr>"#, esc(&p.phase), esc(&p.status), duration(p.duration_ms));
    }
    b.push_str(r#"</tbody></table></div><div><h2>Counters</h2><table id="counters"><tbody>"#);
    let rows: [(&str, String); 9] = [
        ("Files prepared", c.files_prepared.to_string()),
        ("Files transferred", c.files_transferred.to_string()),
        ("Bytes transferred", bytes(c.bytes_transferred)),
        ("Files verified", c.files_verified.to_string()),
        ("Bytes verified", bytes(c.bytes_verified)),
        ("Files skipped", c.files_skipped.to_string()),
        ("Files deleted", c.files_deleted.to_string()),
        ("Files failed", c.files_failed.to_string()),
        ("Files mismatched", c.files_mismatched.to_string()),
    ];
    for (k, v) in rows {
        let _ = write!(b, r#"<tr><th>{k}</th><td class="num">{v}</td></tr>"#);
    }
    b.push_str("</tbody></table></div></div>");
    let failed = c.files_failed + c.files_mismatched;
    if failed > 0 || !e.failures.is_empty() {
        let _ = write!(b, r#"<p><a id="failures-link" href="/console/executions/{}/failures">Failed entries ({failed})</a></p>"#, url_seg(&e.execution_id));
    }
    b
}

pub fn execution(csrf: &str, e: &ExecutionView, fragment: &str) -> String {
    let id = url_seg(&e.execution_id);
    let mut b = format!(r#"<h1>Execution <span class="mono">{}</span></h1>"#, esc(&e.execution_id));
    let task = e.task_name.as_deref().map(|t| format!(r#"task <a href="/console/tasks/{}">{}</a>, "#, url_seg(t), esc(t))).unwrap_or_default();
    let _ = write!(
        b,
        r#"<p>{task}{} <code>{}</code> → <code>{}</code>, started {}{}</p>"#,
        esc(&e.mode.to_lowercase()),
        esc(&e.source_location),
        esc(&e.destination_location),
        time(e.start_time_unix_ms),
        e.end_time_unix_ms.map(|t| format!(", ended {}", time(t))).unwrap_or_default()
    );
    let terminal = matches!(e.status.as_str(), "SUCCESS" | "ERROR" | "CANCELLED");
    if terminal {
        let _ = write!(b, r#"<div id="progress">{fragment}</div>"#);
    } else {
        // The SSE extension swaps each `progress` event into the div and closes on `end`.
        let _ =
            write!(b, r#"<div id="progress" hx-ext="sse" sse-connect="/console/executions/{id}/events" sse-swap="progress" sse-close="end">{fragment}</div>"#);
    }
    if let Some(p) = &e.report_path {
        let _ = write!(b, r#"<p class="note">Task report: <code>{}</code></p>"#, esc(p));
    } else if let Some(err) = &e.report_error {
        b.push_str(&notice("error", &format!("The task report could not be written: {err}")));
    }
    page(&Frame { title: &e.execution_id, nav: "executions", csrf: Some(csrf), live: !terminal }, &b)
}

/// One failed entry: from the task report (with its code) or from the execution's summary.
pub struct FailedEntry {
    pub path: String,
    pub status: String,
    pub code: String,
    pub reason: String,
}

pub fn failures(csrf: &str, id: &str, list: &[FailedEntry], source: &str) -> String {
    let mut b = format!(r#"<h1>Failed entries of <a class="mono" href="/console/executions/{}">{}</a></h1>"#, url_seg(id), esc(id));
    let _ = write!(b, r#"<p class="note">{}</p>"#, esc(source));
    if list.is_empty() {
        b.push_str(r#"<p class="note">No failed entries.</p>"#);
    } else {
        b.push_str(r#"<table id="failed"><thead><tr><th>Path</th><th>Status</th><th>Code</th><th>Reason</th></tr></thead><tbody>"#);
        for f in list {
            let _ = write!(
                b,
                r#"<tr><td class="mono">{}</td><td>{}</td><td class="mono">{}</td><td>{}</td></tr>"#,
                esc(&f.path),
                esc(&f.status),
                esc(&f.code),
                esc(&f.reason)
            );
        }
        b.push_str("</tbody></table>");
    }
    page(&frame("Failed entries", "executions", csrf), &b)
}

pub fn tasks(csrf: &str, list: &[Task]) -> String {
    let mut b = String::from(r#"<h1>Tasks</h1><p><a href="/console/tasks/new" id="new-task">New task</a></p>"#);
    if list.is_empty() {
        b.push_str(r#"<p class="note">No tasks yet.</p>"#);
    } else {
        b.push_str(r#"<table><thead><tr><th>Task</th><th>Source</th><th>Destination</th><th>Schedule</th><th></th></tr></thead><tbody>"#);
        for t in list {
            let sched =
                t.schedule.as_ref().map(|s| format!("<code>{}</code> {}", esc(&s.schedule_expression), esc(s.status.as_str()))).unwrap_or_else(|| "-".into());
            let _ = write!(
                b,
                r#"<tr><td><a href="/console/tasks/{0}">{1}</a></td><td><code>{2}</code></td><td><code>{3}</code></td><td>{sched}</td><td><form method="post" action="/console/tasks/{0}/start" class="inline">{4}<button class="secondary">Start</button></form></td></tr>"#,
                url_seg(&t.name),
                esc(&t.name),
                esc(&t.source_location),
                esc(&t.destination_location),
                csrf_field(csrf)
            );
        }
        b.push_str("</tbody></table>");
    }
    page(&frame("Tasks", "tasks", csrf), &b)
}

/// The fields of a task form, each with the error that names it under it. `editing` is the
/// task's name when the form edits one (its name and locations are then fixed).
fn task_fields(form: &TaskForm, editing: bool) -> String {
    let mut b = String::new();
    for f in FIELDS {
        if editing && f.create_only {
            continue;
        }
        let value = form.value(f.name);
        let err = form.error_for(f.name);
        let id = f.name.replace('.', "-");
        let invalid = if err.is_some() { r#" aria-invalid="true""# } else { "" };
        let described = if err.is_some() { format!(r#" aria-describedby="{id}-error""#) } else { String::new() };
        let _ = write!(b, r#"<label for="{id}">{}</label>"#, esc(f.label));
        if f.choices.is_empty() {
            let _ = write!(b, r#"<input type="text" id="{id}" name="{}" value="{}"{invalid}{described}>"#, f.name, esc(value));
        } else {
            let _ = write!(b, r#"<select id="{id}" name="{}"{invalid}{described}>"#, f.name);
            for c in f.choices {
                let sel = if *c == value { " selected" } else { "" };
                let shown = if c.is_empty() { "(default)" } else { c };
                let _ = write!(b, r#"<option value="{}"{sel}>{}</option>"#, esc(c), esc(shown));
            }
            b.push_str("</select>");
        }
        let _ = write!(b, r#"<p class="hint">{}</p>"#, esc(f.hint));
        if let Some(e) = err {
            let _ = write!(b, r#"<p class="field-error" id="{id}-error" role="alert">{}</p>"#, esc(&e));
        }
    }
    b
}

pub fn new_task(csrf: &str, form: &TaskForm) -> String {
    let mut b = String::from("<h1>New task</h1>");
    if let Some(e) = form.unplaced_error() {
        b.push_str(&notice("error", &e));
    }
    let _ = write!(
        b,
        r#"<form method="post" action="/console/tasks" class="stack" id="task-form">{}{}<div class="actions"><button>Create task</button></div></form>"#,
        csrf_field(csrf),
        task_fields(form, false)
    );
    page(&frame("New task", "tasks", csrf), &b)
}

pub fn task(csrf: &str, t: &Task, form: &TaskForm, saved: bool) -> String {
    let name = url_seg(&t.name);
    let mut b = format!(r#"<h1>Task {}</h1>"#, esc(&t.name));
    if saved {
        b.push_str(&notice("note", "Saved."));
    }
    let _ =
        write!(b, r#"<p><code>{}</code> → <code>{}</code>, created {}</p>"#, esc(&t.source_location), esc(&t.destination_location), time(t.created_unix_ms));
    let _ = write!(
        b,
        r#"<div class="actions"><form method="post" action="/console/tasks/{name}/start" class="inline">{0}<button id="start">Start</button></form><a href="/console/executions?task={name}">Executions</a></div>"#,
        csrf_field(csrf)
    );
    if let Some(s) = &t.schedule {
        let (to, label) = if s.status.as_str() == "ENABLED" { ("DISABLED", "Disable schedule") } else { ("ENABLED", "Enable schedule") };
        let why = s.disabled_reason.as_deref().map(|r| format!(" ({})", esc(r))).unwrap_or_default();
        let _ = write!(
            b,
            r#"<p>Schedule <code>{}</code> {}: <strong id="schedule-status">{}</strong>{why} <form method="post" action="/console/tasks/{name}/schedule" class="inline">{}<input type="hidden" name="Status" value="{to}"><button class="secondary" id="schedule-toggle">{label}</button></form></p>"#,
            esc(&s.schedule_expression),
            esc(s.time_zone.as_deref().unwrap_or("UTC")),
            esc(s.status.as_str()),
            csrf_field(csrf),
        );
    }
    b.push_str("<h2>Edit</h2>");
    if let Some(e) = form.unplaced_error() {
        b.push_str(&notice("error", &e));
    }
    let _ = write!(
        b,
        r#"<form method="post" action="/console/tasks/{name}" class="stack" id="task-form">{}{}<div class="actions"><button>Save</button></div></form>"#,
        csrf_field(csrf),
        task_fields(form, true)
    );
    page(&frame(&t.name, "tasks", csrf), &b)
}

pub fn agents(csrf: &str, list: &[AgentView], now_ms: u64) -> String {
    let mut b = String::from("<h1>Agents</h1>");
    if list.is_empty() {
        b.push_str(r#"<p class="note">No agent has registered yet: start one with <code>ferry-worker --etcd URL</code>.</p>"#);
    }
    for a in list {
        let ago =
            if a.last_heartbeat_unix_ms == 0 { "never".to_string() } else { format!("{} ago", duration(now_ms.saturating_sub(a.last_heartbeat_unix_ms))) };
        let peers = if a.link_peers.is_empty() { "-".into() } else { esc(&a.link_peers.join(", ")) };
        let _ = write!(
            b,
            r#"<section class="agent" id="agent-{anchor}"><h2>{name} <span class="phase status-{status}">{status}</span></h2><table><tbody><tr><th>Host</th><td>{host}</td></tr><tr><th>Version</th><td>{version} <code>{commit}</code></td></tr><tr><th>Last heartbeat</th><td>{beat} ({ago})</td></tr><tr><th>Throughput</th><td>{rate}/s, {total} since it started</td></tr><tr><th>Movers</th><td>{movers}</td></tr><tr><th>Labels</th><td>{labels}</td></tr><tr><th>Link peers</th><td>{peers}</td></tr></tbody></table>"#,
            anchor = url_seg(&a.name),
            name = esc(&a.name),
            status = esc(&a.status),
            host = esc(&a.host),
            version = esc(&a.version),
            commit = esc(a.commit.get(..12).unwrap_or(&a.commit)),
            beat = time(a.last_heartbeat_unix_ms),
            rate = bytes(a.bytes_per_second),
            total = bytes(a.bytes_total),
            movers = a.movers,
            labels = esc(&a.labels.join(", ")),
        );
        if !a.recent_errors.is_empty() {
            b.push_str(r#"<table><thead><tr><th>When</th><th>Execution</th><th>Code</th><th>Message</th></tr></thead><tbody>"#);
            for e in a.recent_errors.iter().rev() {
                let _ = write!(
                    b,
                    r#"<tr><td>{}</td><td><a class="mono" href="/console/executions/{}">{}</a></td><td class="mono">{}</td><td>{}</td></tr>"#,
                    time(e.unix_ms),
                    url_seg(&e.execution_id),
                    esc(&e.execution_id),
                    esc(&e.code),
                    esc(&e.message)
                );
            }
            b.push_str("</tbody></table>");
        }
        b.push_str("</section>");
    }
    page(&frame("Agents", "agents", csrf), &b)
}

pub fn events(csrf: &str, newest_first: &[EventView]) -> String {
    let mut b = String::from("<h1>Events</h1>");
    if newest_first.is_empty() {
        b.push_str(r#"<p class="note">No events.</p>"#);
    } else {
        b.push_str(r#"<table><thead><tr><th>When</th><th>Kind</th><th>Task</th><th>Execution</th><th>Agent</th><th>Message</th></tr></thead><tbody>"#);
        for v in newest_first {
            let e = &v.event;
            let link = |base: &str, x: &Option<String>| {
                x.as_deref().map(|x| format!(r#"<a href="/console/{base}/{}">{}</a>"#, url_seg(x), esc(x))).unwrap_or_default()
            };
            let _ = write!(
                b,
                r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="mono">{}</td><td>{}</td><td>{}</td></tr>"#,
                time(e.time_unix_ms),
                esc(&e.kind),
                link("tasks", &e.task),
                link("executions", &e.execution),
                esc(e.agent.as_deref().unwrap_or("")),
                esc(&e.message)
            );
        }
        b.push_str("</tbody></table>");
    }
    page(&frame("Events", "events", csrf), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sparkline_scales_samples_into_its_box() {
        assert!(sparkline(&[1.0]).contains("collecting samples"));
        let s = sparkline(&[0.0, 50.0, 100.0]);
        assert!(s.contains(r#"points="0.0,58.0 150.0,30.0 300.0,2.0""#), "{s}");
        assert!(s.contains("peak 100 B/s"), "{s}");
    }

    #[test]
    fn the_login_page_escapes_its_error() {
        let p = login(Some("<img src=x onerror=alert(1)>"));
        assert!(p.contains("&lt;img src=x onerror=alert(1)&gt;") && !p.contains("<img"));
    }

    #[test]
    fn a_refusal_offers_no_logout_form_with_an_empty_token() {
        let p = problem(None, "Forbidden", "the form carries no CSRF token");
        assert!(p.contains("no CSRF token") && !p.contains("/logout"));
        assert!(problem(Some("t"), "Task", "x").contains(r#"action="/logout""#));
    }
}
