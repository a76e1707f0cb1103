//! The console's decisions, without I/O: the session table, the cookie, the CSRF and origin
//! checks, and where a request without a session goes.
//!
//! A session is a random id (256 bits from the OS-seeded CSPRNG) that names an entry in this
//! coordinator's memory; the cookie never holds the API token. Sessions end when the
//! coordinator restarts, after [`IDLE`] without a request, after [`LIFETIME`] in any case, and
//! on logout.

use std::collections::HashMap;

/// The cookie's name.
pub const COOKIE: &str = "ferry_session";
/// A session unused this long ends.
pub const IDLE_MS: u64 = 8 * 3600 * 1000;
/// A session ends this long after login, however busy.
pub const LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;
/// At most this many sessions are kept; a new login beyond it ends the least recently used.
pub const MAX_SESSIONS: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The token every form of this session carries (`csrf`).
    pub csrf: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
}

/// The sessions of this coordinator process.
#[derive(Default)]
pub struct SessionTable {
    sessions: HashMap<String, Session>,
}

/// 32 random bytes as hex.
pub fn random_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Equal strings, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl SessionTable {
    /// Opens a session; returns its id (the cookie's value).
    pub fn open(&mut self, now_ms: u64) -> String {
        self.expire(now_ms);
        if self.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.last_seen_ms).map(|(id, _)| id.clone()) {
                self.sessions.remove(&oldest);
            }
        }
        let id = random_id();
        self.sessions.insert(id.clone(), Session { csrf: random_id(), created_ms: now_ms, last_seen_ms: now_ms });
        id
    }

    /// The live session `id` names, marked as used now; None when unknown or expired.
    pub fn touch(&mut self, id: &str, now_ms: u64) -> Option<Session> {
        let live = self.sessions.get(id).is_some_and(|s| Self::alive(s, now_ms));
        if !live {
            self.sessions.remove(id);
            return None;
        }
        let s = self.sessions.get_mut(id)?;
        s.last_seen_ms = now_ms;
        Some(s.clone())
    }

    pub fn close(&mut self, id: &str) {
        self.sessions.remove(id);
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn alive(s: &Session, now_ms: u64) -> bool {
        now_ms.saturating_sub(s.last_seen_ms) < IDLE_MS && now_ms.saturating_sub(s.created_ms) < LIFETIME_MS
    }

    fn expire(&mut self, now_ms: u64) {
        self.sessions.retain(|_, s| Self::alive(s, now_ms));
    }
}

/// The value of cookie `name` in a `Cookie` request header.
pub fn cookie_value<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value that holds session `id`; Secure when the console is served over TLS
/// (a browser drops a Secure cookie set over plain HTTP).
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{}", if secure { "; Secure" } else { "" })
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", if secure { "; Secure" } else { "" })
}

/// `scheme://authority[/...]` → `authority`.
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.split(['/', '?', '#']).next().unwrap_or(rest))
}

/// A state-changing request must come from a page of this console: its Origin (or, without
/// one, its Referer) names the host the request was sent to. Browsers send at least one of
/// them on a cross-site POST; a request with neither (a script, curl) is judged by the CSRF
/// token alone.
pub fn check_origin(origin: Option<&str>, referer: Option<&str>, host: Option<&str>) -> Result<(), String> {
    let (what, value) = match (origin, referer) {
        (Some(o), _) if o != "null" => ("Origin", o),
        (Some(_), _) => return Err("the request's Origin is opaque (null): submit the form from a console page".into()),
        (None, Some(r)) => ("Referer", r),
        (None, None) => return Ok(()),
    };
    match (authority(value), host) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(format!("the request's {what} ({value}) is not this console ({}): submit the form from a console page", host.unwrap_or("no Host header"))),
    }
}

/// The CSRF token a form carried, checked against its session's.
pub fn check_csrf(session: &Session, presented: Option<&str>) -> Result<(), String> {
    match presented {
        Some(t) if same(t, &session.csrf) => Ok(()),
        Some(_) => {
            Err("the form's CSRF token does not match this session (the page is stale, or came from elsewhere): reload the page and submit again".into())
        }
        None => Err("the form carries no CSRF token: submit it from a console page".into()),
    }
}

/// What a console request without a live session gets.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSession {
    /// 303 to the login page: a page a person asked for.
    ToLogin,
    /// 401: a request a page's script made (SSE, htmx), which cannot follow to a login page.
    Unauthorized,
}

/// `htmx`: the request came from htmx (`HX-Request`); `event_stream`: it asks for
/// `text/event-stream` (an EventSource).
pub fn without_session(htmx: bool, event_stream: bool) -> NoSession {
    if htmx || event_stream {
        NoSession::Unauthorized
    } else {
        // A POST after the session ended also goes to the login page: the form is lost either
        // way, and the login page says why.
        NoSession::ToLogin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_live_until_idle_lifetime_or_close() {
        let mut t = SessionTable::default();
        let a = t.open(1_000);
        assert_eq!(a.len(), 64);
        let s = t.touch(&a, 2_000).unwrap();
        assert_eq!((s.created_ms, s.last_seen_ms), (1_000, 2_000));
        assert_eq!(s.csrf.len(), 64);
        assert_ne!(s.csrf, a, "the CSRF token is not the session id");
        assert!(t.touch("nope", 2_000).is_none());
        // Idle: each request moves the idle deadline.
        assert!(t.touch(&a, 2_000 + IDLE_MS - 1).is_some());
        assert!(t.touch(&a, 2_000 + 2 * IDLE_MS - 2).is_some());
        assert!(t.touch(&a, 2_000 + 3 * IDLE_MS).is_none());
        assert!(t.is_empty(), "an expired session is forgotten");
        // Lifetime: however busy.
        let b = t.open(0);
        let mut now = 0;
        while now + IDLE_MS / 2 < LIFETIME_MS {
            now += IDLE_MS / 2;
            assert!(t.touch(&b, now).is_some());
        }
        assert!(t.touch(&b, LIFETIME_MS).is_none());
        let c = t.open(5);
        t.close(&c);
        assert!(t.touch(&c, 6).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_least_recently_used() {
        let mut t = SessionTable::default();
        let first = t.open(0);
        let ids: Vec<String> = (1..MAX_SESSIONS as u64).map(|i| t.open(i)).collect();
        assert!(t.touch(&first, MAX_SESSIONS as u64).is_some(), "used last, so kept");
        let newest = t.open(MAX_SESSIONS as u64 + 1);
        assert_eq!(t.len(), MAX_SESSIONS);
        assert!(t.touch(&ids[0], MAX_SESSIONS as u64 + 2).is_none(), "the least recently used went");
        assert!(t.touch(&first, MAX_SESSIONS as u64 + 2).is_some());
        assert!(t.touch(&newest, MAX_SESSIONS as u64 + 2).is_some());
    }

    #[test]
    fn the_cookie_is_http_only_same_site_strict_and_secure_over_tls() {
        assert_eq!(set_cookie("abc", false), "ferry_session=abc; Path=/; HttpOnly; SameSite=Strict");
        assert_eq!(set_cookie("abc", true), "ferry_session=abc; Path=/; HttpOnly; SameSite=Strict; Secure");
        assert!(clear_cookie(true).contains("Max-Age=0") && clear_cookie(true).ends_with("Secure"));
        assert_eq!(cookie_value(Some("a=1; ferry_session=xyz ; b=2"), COOKIE), Some("xyz"));
        assert_eq!(cookie_value(Some("xferry_session=1"), COOKIE), None);
        assert_eq!(cookie_value(None, COOKIE), None);
    }

    #[test]
    fn origin_or_referer_must_name_this_host() {
        let host = Some("127.0.0.1:8080");
        assert!(check_origin(Some("http://127.0.0.1:8080"), None, host).is_ok());
        assert!(check_origin(Some("https://127.0.0.1:8080"), Some("http://evil.example/"), host).is_ok(), "Origin wins over Referer");
        assert!(check_origin(None, Some("http://127.0.0.1:8080/console/tasks?x=1"), host).is_ok());
        assert!(check_origin(None, None, host).is_ok(), "no browser evidence: the CSRF token decides");
        let e = check_origin(Some("http://evil.example"), None, host).unwrap_err();
        assert!(e.contains("Origin (http://evil.example)") && e.contains("127.0.0.1:8080"), "{e}");
        assert!(check_origin(None, Some("http://127.0.0.1:8080.evil.example/"), host).is_err());
        assert!(check_origin(Some("null"), None, host).is_err());
        assert!(check_origin(Some("http://127.0.0.1:8080"), None, None).is_err());
    }

    #[test]
    fn csrf_tokens_must_match_the_sessions() {
        let s = Session { csrf: "t".repeat(64), created_ms: 0, last_seen_ms: 0 };
        assert!(check_csrf(&s, Some(&"t".repeat(64))).is_ok());
        assert!(check_csrf(&s, Some(&"u".repeat(64))).unwrap_err().contains("reload the page"));
        assert!(check_csrf(&s, Some("")).is_err());
        assert!(check_csrf(&s, None).unwrap_err().contains("no CSRF token"));
    }

    #[test]
    fn pages_go_to_the_login_and_scripts_get_401() {
        assert_eq!(without_session(false, false), NoSession::ToLogin);
        assert_eq!(without_session(false, true), NoSession::Unauthorized, "an EventSource cannot follow to a login page");
        assert_eq!(without_session(true, false), NoSession::Unauthorized);
    }
}
