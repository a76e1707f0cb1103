//! `smb://[DOMAIN;]USER@HOST[:PORT]/SHARE[/PATH]`: which share, as whom, and where in it.
//!
//! The password never appears in the URL (nor on the command line): a URL with
//! `USER:PASSWORD@` is refused, and the password comes from `FERRY_SMB_PASSWORD` or a file
//! given with `--smb-password-file` (see [`super::password`]).

/// A parsed `smb://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmbUrl {
    pub domain: Option<String>,
    pub user: String,
    pub host: String,
    pub port: u16,
    pub share: String,
    /// The directory below the share, `/`-separated, without leading or trailing `/` (empty:
    /// the share's root).
    pub path: String,
}

const FORM: &str = "smb://[DOMAIN;]USER@HOST[:PORT]/SHARE[/PATH]";

/// `%XX` escapes decoded (a user or domain may hold characters a URL cannot).
fn decode(s: &str, what: &str, uri: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(v) = hex else {
                return Err(format!("{uri}: a bad %-escape in the {what} (use %XX with two hex digits)"));
            };
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{uri}: the {what} is not UTF-8 once %-escapes are decoded"))
}

impl SmbUrl {
    /// Parses `uri`; the error is one line naming the URL and the fix.
    pub fn parse(uri: &str) -> Result<SmbUrl, String> {
        let rest = uri.strip_prefix("smb://").ok_or_else(|| format!("{uri}: not an smb:// URL (use {FORM})"))?;
        if rest.contains(['?', '#']) {
            return Err(format!("{uri}: smb:// URLs take no query or fragment (use {FORM})"));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
            return Err(format!("{uri}: name the user (use {FORM}; the password comes from FERRY_SMB_PASSWORD or --smb-password-file)"));
        };
        if userinfo.contains(':') {
            // Not echoed: the message would show the password.
            let shown = format!("smb://{}:***@{hostport}/{path}", userinfo.split(':').next().unwrap_or_default());
            return Err(format!(
                "{shown}: the URL holds a password; passwords never go in URLs or on the command line (remove ':PASSWORD' and set FERRY_SMB_PASSWORD or give --smb-password-file FILE)"
            ));
        }
        let (domain, user) = match userinfo.split_once(';') {
            Some((d, u)) => (Some(decode(d, "domain", uri)?).filter(|d| !d.is_empty()), decode(u, "user", uri)?),
            None => (None, decode(userinfo, "user", uri)?),
        };
        if user.is_empty() {
            return Err(format!("{uri}: the user name is empty (use {FORM})"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            _ if hostport.starts_with('[') => return Err(format!("{uri}: IPv6 addresses are not supported for SMB (use a host name or an IPv4 address)")),
            Some((h, p)) => (h, p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| format!("{uri}: the port '{p}' is not a number from 1 to 65535"))?),
            None => (hostport, 445),
        };
        if host.is_empty() {
            return Err(format!("{uri}: the host is empty (use {FORM})"));
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let share = parts.next().ok_or_else(|| format!("{uri}: name the share (use {FORM})"))?.to_string();
        let mut below = Vec::new();
        for p in parts {
            if p == "." || p == ".." || p.contains('\\') {
                return Err(format!("{uri}: the path may not hold '.', '..' or '\\' (use '/' between names)"));
            }
            below.push(decode(p, "path", uri)?);
        }
        Ok(SmbUrl { domain, user, host: host.to_string(), port, share: decode(&share, "share", uri)?, path: below.join("/") })
    }

    /// The URL for messages (never with a password: it has none).
    pub fn display(&self) -> String {
        let domain = self.domain.as_deref().map(|d| format!("{d};")).unwrap_or_default();
        let port = if self.port == 445 { String::new() } else { format!(":{}", self.port) };
        let path = if self.path.is_empty() { String::new() } else { format!("/{}", self.path) };
        format!("smb://{domain}{}@{}{port}/{}{path}", self.user, self.host, self.share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_is_parsed() {
        let u = SmbUrl::parse("smb://CORP;alice@files.example:1445/data/a/b/").unwrap();
        assert_eq!(
            u,
            SmbUrl { domain: Some("CORP".into()), user: "alice".into(), host: "files.example".into(), port: 1445, share: "data".into(), path: "a/b".into() }
        );
        assert_eq!(u.display(), "smb://CORP;alice@files.example:1445/data/a/b");
        let u = SmbUrl::parse("smb://bob@10.0.0.1/s").unwrap();
        assert_eq!((u.domain, u.port, u.path.as_str()), (None, 445, ""));
        assert_eq!(SmbUrl::parse("smb://b%40x@h/s/d%20e").unwrap().path, "d e");
    }

    #[test]
    fn passwords_and_malformed_urls_are_refused_in_one_line() {
        for (uri, says) in [
            ("smb://alice:secret@h/s", "holds a password"),
            ("smb://h/s", "name the user"),
            ("smb://a@h", "name the share"),
            ("smb://a@h:99999/s", "port"),
            ("smb://a@h/s/../x", "'..'"),
            ("smb://a@[::1]/s", "IPv6"),
            ("smb://a@h/s?x=1", "no query"),
        ] {
            let e = SmbUrl::parse(uri).unwrap_err();
            assert!(e.contains(says) && !e.contains('\n'), "{uri}: {e}");
            assert!(!e.contains("secret"), "the password is never shown: {e}");
        }
    }
}
