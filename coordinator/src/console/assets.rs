//! The console's static files, embedded in the binary. Each URL carries a hash of the content,
//! so the files are cached for a year and a new build is fetched anew.

use std::sync::OnceLock;

pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// The same bytes gzipped, sent to a client that accepts gzip.
    pub gzip: Option<&'static [u8]>,
}

pub const ASSETS: [Asset; 3] = [
    Asset { name: "console.css", content_type: "text/css; charset=utf-8", body: include_bytes!("assets/console.css"), gzip: None },
    Asset {
        name: "htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/htmx-2.0.11.min.js"),
        gzip: Some(include_bytes!("assets/htmx-2.0.11.min.js.gz")),
    },
    Asset {
        name: "htmx-ext-sse.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/htmx-ext-sse-2.2.4.min.js"),
        gzip: Some(include_bytes!("assets/htmx-ext-sse-2.2.4.min.js.gz")),
    },
];

pub const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

pub fn get(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The URL pages link `name` by: `/console/assets/{name}?v={crc32c}`.
pub fn url(name: &str) -> String {
    static HASHES: OnceLock<Vec<u32>> = OnceLock::new();
    let hashes = HASHES.get_or_init(|| ASSETS.iter().map(|a| crc32c::crc32c(a.body)).collect());
    let i = ASSETS.iter().position(|a| a.name == name).expect("a page links a known asset");
    format!("/console/assets/{name}?v={:08x}", hashes[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gzipped_asset_is_its_plain_body() {
        for a in &ASSETS {
            let Some(gz) = a.gzip else { continue };
            // A gzip member: magic, deflate, then the CRC32 and size of the plain body.
            assert_eq!(&gz[..3], &[0x1f, 0x8b, 8], "{}", a.name);
            let n = gz.len();
            let size = u32::from_le_bytes(gz[n - 4..].try_into().unwrap());
            assert_eq!(size as usize, a.body.len(), "{} .gz is another version", a.name);
        }
        assert!(url("console.css").starts_with("/console/assets/console.css?v="));
        assert!(get("htmx.min.js").is_some() && get("../mod.rs").is_none());
    }
}
