//! `nfs://HOST[:PORT]/EXPORT[/PATH][?OPTIONS]`: where an NFS location is and how to reach it.
//!
//! The options are libnfs's names, so a URL that works with `nfs-ls` works here:
//! - `nfsport=N`: the NFS service's port (also `:PORT`); asked of the portmapper when unset;
//! - `mountport=N`: the MOUNT service's port; asked of the portmapper when unset;
//! - `uid=N`, `gid=N`: the AUTH_SYS credentials (default: this process's own);
//! - `nconnect=N`: connections per agent (1–64, default 8);
//! - `timeo=S`: seconds one request may take before it is sent again on a new connection.
//!
//! Which leading components of the path are the export is asked of the server when the
//! location is opened (the longest prefix it mounts), so the URL needs no separator.

use std::time::Duration;

/// A parsed `nfs://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsUrl {
    pub host: String,
    /// The protocol: NFSv3 unless `?vers=4.1` (or `4`) says otherwise.
    pub version: Version,
    /// The path's first component names an export (`nfs://`), so a missing one is reported
    /// as such; an EFS file system's root is the file system itself.
    pub export_in_path: bool,
    pub nfs_port: Option<u16>,
    pub mount_port: Option<u16>,
    /// Export and path below it, as one absolute path (`/srv/data/sub`).
    pub path: Vec<u8>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub connections: usize,
    pub timeout: Duration,
}

/// The NFS version spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// NFSv3 with MOUNT; the path is the server's exported directory.
    V3,
    /// NFSv4.1 on port 2049 unless given; the path is in the server's (pseudo) namespace.
    V41,
}

pub const DEFAULT_CONNECTIONS: usize = 8;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl NfsUrl {
    pub fn parse(uri: &str) -> Result<NfsUrl, String> {
        let usage = "expected nfs://HOST[:PORT]/EXPORT[/PATH]";
        let rest = uri.strip_prefix("nfs://").ok_or_else(|| format!("{uri}: not an nfs:// URL ({usage})"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{uri}: the server is missing ({usage})"));
        }
        let (host, port) = split_host_port(authority).map_err(|e| format!("{uri}: {e} ({usage})"))?;
        let path = decode(path).map_err(|e| format!("{uri}: {e}"))?;
        let path: Vec<u8> = {
            // Normalised: one leading slash, no empty components, no trailing slash.
            let parts: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
            if parts.iter().any(|c| *c == b"." || *c == b"..") {
                return Err(format!("{uri}: the path may not contain '.' or '..' components"));
            }
            let mut p = Vec::new();
            for c in parts {
                p.push(b'/');
                p.extend_from_slice(c);
            }
            p
        };
        if path.is_empty() {
            return Err(format!("{uri}: the export is missing ({usage})"));
        }
        let mut url = NfsUrl {
            host,
            version: Version::V3,
            export_in_path: true,
            nfs_port: port,
            mount_port: None,
            path,
            uid: None,
            gid: None,
            connections: DEFAULT_CONNECTIONS,
            timeout: DEFAULT_TIMEOUT,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |max: u64| -> Result<u64, String> {
                v.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(|| format!("{uri}: option {k}={v} is not a number up to {max}"))
            };
            match k {
                "nfsport" => url.nfs_port = Some(number(65535)? as u16),
                "mountport" => url.mount_port = Some(number(65535)? as u16),
                "uid" => url.uid = Some(number(u32::MAX as u64)? as u32),
                "gid" => url.gid = Some(number(u32::MAX as u64)? as u32),
                "nconnect" => {
                    url.connections = number(64)? as usize;
                    if url.connections == 0 {
                        return Err(format!("{uri}: nconnect must be 1 to 64"));
                    }
                }
                "timeo" => url.timeout = Duration::from_secs(number(3600)?.max(1)),
                "vers" => {
                    url.version = match v {
                        "3" => Version::V3,
                        "4" | "4.1" => Version::V41,
                        _ => return Err(format!("{uri}: vers={v} is not a version this client speaks (3 or 4.1)")),
                    }
                }
                other => return Err(format!("{uri}: unknown option '{other}' (known: vers, nfsport, mountport, uid, gid, nconnect, timeo)")),
            }
        }
        if url.version == Version::V41 && url.mount_port.is_some() {
            return Err(format!("{uri}: mountport is for NFSv3; NFSv4.1 needs no MOUNT service (leave it out)"));
        }
        Ok(url)
    }

    /// The URL without options, for messages.
    pub fn display(&self) -> String {
        let port = self.nfs_port.map(|p| format!(":{p}")).unwrap_or_default();
        let vers = if self.version == Version::V41 { "?vers=4.1" } else { "" };
        format!("nfs://{}{port}{}{vers}", self.host, String::from_utf8_lossy(&self.path))
    }
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (h, after) = inner.split_once(']').ok_or("an IPv6 address needs its closing ']'")?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the server is missing".into());
    }
    let port = port.map(|p| p.parse::<u16>().map_err(|_| format!("port '{p}' is not a number up to 65535"))).transpose()?;
    Ok((host.to_string(), port))
}

/// Percent-decoding, so names with any bytes can be written in a URL.
fn decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| format!("'%' at byte {i} is not followed by two hex digits"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_path_and_options() {
        let u = NfsUrl::parse("nfs://127.0.0.1:2049/srv/export/sub%20dir/?mountport=20048&uid=5&gid=6&nconnect=4&timeo=9").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.nfs_port, Some(2049));
        assert_eq!(u.mount_port, Some(20048));
        assert_eq!(u.path, b"/srv/export/sub dir");
        assert_eq!((u.uid, u.gid, u.connections, u.timeout), (Some(5), Some(6), 4, Duration::from_secs(9)));
        let v6 = NfsUrl::parse("nfs://[::1]/e?nfsport=12049").unwrap();
        assert_eq!((v6.host.as_str(), v6.nfs_port), ("::1", Some(12049)));
        assert_eq!(NfsUrl::parse("nfs://h//e//x/").unwrap().path, b"/e/x");
        assert_eq!(u.version, Version::V3);
        let v4 = NfsUrl::parse("nfs://fs.example:2049/export/a?vers=4.1&nconnect=2").unwrap();
        assert_eq!((v4.version, v4.path.as_slice()), (Version::V41, b"/export/a".as_slice()));
        assert_eq!(v4.display(), "nfs://fs.example:2049/export/a?vers=4.1");
    }

    #[test]
    fn refuses_what_cannot_be_a_location() {
        for (bad, why) in [
            ("nfs://", "server is missing"),
            ("nfs://host", "export is missing"),
            ("nfs://host/", "export is missing"),
            ("nfs://host:99999/e", "port"),
            ("nfs://host/e/../etc", "'..'"),
            ("nfs://host/e?nconnect=0", "nconnect"),
            ("nfs://host/e?bogus=1", "unknown option"),
            ("nfs://host/e%zz", "hex digits"),
            ("nfs://host/e?vers=2", "3 or 4.1"),
            ("nfs://host/e?vers=4.1&mountport=1", "needs no MOUNT"),
        ] {
            let err = NfsUrl::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
