//! HTML building blocks: the one escaping helper every user-controlled string goes through,
//! the page frame, and formatting of times, sizes and durations.

use std::fmt::Write;

use super::assets;

/// Escapes text for an HTML element or a quoted attribute value.
pub fn esc(s: &str) -> String {
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

/// Escapes a path segment of a console URL (task names and execution ids are restricted to
/// safe characters, but a URL is built from whatever the Store holds).
pub fn url_seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Unix ms as `2026-12-07 15:20:47 UTC`; `-` for 0.
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms as i64).map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_else(|| "-".into())
}

/// A duration as `1h02m03s`, `2m05s`, `3.4s`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{:.1}s", ms as f64 / 1000.0),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60),
    }
}

pub use crate::progress::human_bytes as bytes;

/// The hidden field every console form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// What the frame around a page needs.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The nav entry to mark: "executions", "tasks", "agents", "events"; "" for none.
    pub nav: &'a str,
    /// The session's CSRF token (for the logout form); None on the login page.
    pub csrf: Option<&'a str>,
    /// Load htmx and its SSE extension (only pages with live parts do).
    pub live: bool,
}

pub fn page(f: &Frame<'_>, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 1024);
    h.push_str(r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">"#);
    let _ = write!(h, "<title>{} · ferry</title>", esc(f.title));
    let _ = write!(h, r#"<link rel="stylesheet" href="{}">"#, assets::url("console.css"));
    if f.live {
        // htmx's indicator styles would be an inline <style>, which the CSP refuses.
        h.push_str(r#"<meta name="htmx-config" content='{"includeIndicatorStyles":false}'>"#);
        let _ =
            write!(h, r#"<script src="{}" defer></script><script src="{}" defer></script>"#, assets::url("htmx.min.js"), assets::url("htmx-ext-sse.min.js"));
    }
    h.push_str("</head><body>");
    if let Some(csrf) = f.csrf {
        h.push_str(r#"<nav><a class="brand" href="/console/executions">ferry</a>"#);
        for (key, label) in [("executions", "Executions"), ("tasks", "Tasks"), ("agents", "Agents"), ("events", "Events")] {
            let cur = if key == f.nav { r#" aria-current="page""# } else { "" };
            let _ = write!(h, r#"<a href="/console/{key}"{cur}>{label}</a>"#);
        }
        let _ = write!(h, r#"<form method="post" action="/logout" class="logout">{}<button>Log out</button></form></nav>"#, csrf_field(csrf));
    }
    h.push_str("<main>");
    h.push_str(body);
    h.push_str("</main></body></html>");
    h
}

/// A message box: `kind` is "error" or "note".
pub fn notice(kind: &str, text: &str) -> String {
    format!(r#"<p class="{kind}" role="{}">{}</p>"#, if kind == "error" { "alert" } else { "status" }, esc(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_in_text_and_attributes() {
        assert_eq!(esc(r#"<script>alert("x")</script> & 'y'"#), "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;");
        assert_eq!(esc("plain/path ü"), "plain/path ü");
        assert_eq!(url_seg("exec-01 a/b?c"), "exec-01%20a%2Fb%3Fc");
    }

    #[test]
    fn times_sizes_and_durations_read_well() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_796_656_847_000), "2026-12-07 15:20:47 UTC");
        assert_eq!(duration(3_400), "3.4s");
        assert_eq!(duration(125_000), "2m05s");
        assert_eq!(duration(3_723_000), "1h02m03s");
    }

    #[test]
    fn the_frame_escapes_the_title_and_loads_scripts_only_on_live_pages() {
        let f = Frame { title: "<b>", nav: "tasks", csrf: Some("tok"), live: false };
        let p = page(&f, "<p>x</p>");
        assert!(p.contains("<title>&lt;b&gt; · ferry</title>"));
        assert!(!p.contains("<script"));
        assert!(p.contains(r#"href="/console/tasks" aria-current="page""#));
        assert!(p.contains(r#"name="csrf" value="tok""#));
        let live = page(&Frame { live: true, ..f }, "");
        assert!(live.contains("htmx.min.js") && live.contains("htmx-ext-sse.min.js"));
    }
}
