//! Include and exclude filters with DataSync's SIMPLE_PATTERN semantics.
//!
//! - A filter string holds patterns separated by `|`.
//! - Patterns match paths relative to the location root, written with a leading `/`
//!   (`/dir/file`). A pattern without a leading `/` and without `*` matches that name at any
//!   depth (as if written `*/name`).
//! - `*` matches any run of bytes, `/` included, so `*/.snapshot` matches `.snapshot` at any
//!   depth and `*.tmp` matches every name ending in `.tmp`.
//! - A pattern that matches a directory matches everything below it.
//! - Excludes win over includes. With no include pattern, everything is included.

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filters {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirDecision {
    /// Not transferred and not scanned.
    Skip,
    /// Scanned, but its entries are filtered one by one (an include may match below it).
    Traverse,
    /// Transferred with everything below it.
    Include,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid filter pattern {pattern:?}: {reason} (patterns look like '/dir|*.tmp|*/.snapshot')")]
pub struct FilterError {
    pub pattern: String,
    pub reason: &'static str,
}

/// Compiled filters, built once per execution.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    include: Vec<Vec<u8>>,
    exclude: Vec<Vec<u8>>,
    manifest: Option<std::sync::Arc<Manifest>>,
}

/// The paths a manifest lists, and every directory above them (so listing visits only
/// those). Held in memory on each worker: its size is the manifest's, not the tree's.
#[derive(Debug, Default)]
pub struct Manifest {
    files: std::collections::HashSet<Vec<u8>>,
    dirs: std::collections::HashSet<Vec<u8>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("manifest line {line}: {reason}")]
pub struct ManifestError {
    pub line: usize,
    pub reason: String,
}

impl Manifest {
    /// Parses a manifest: CSV, one entry per line, the path (relative to the source location)
    /// in the first column, optionally quoted; blank lines are skipped.
    pub fn parse(text: &[u8]) -> Result<Manifest, ManifestError> {
        let mut m = Manifest::default();
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let path = first_csv_field(line).map_err(|reason| ManifestError { line: i + 1, reason: reason.into() })?;
            let path = path.strip_prefix(b"/").unwrap_or(&path).to_vec();
            if path.is_empty() || path.split(|&b| b == b'/').any(|c| c.is_empty() || c == b".." || c == b".") || path.contains(&0) {
                return Err(ManifestError {
                    line: i + 1,
                    reason: format!("{:?} is not a relative path below the source (no '..', '.', '//' or NUL)", String::from_utf8_lossy(&path)),
                });
            }
            let mut at = 0;
            while let Some(p) = path[at..].iter().position(|&b| b == b'/') {
                m.dirs.insert(path[..at + p].to_vec());
                at += p + 1;
            }
            m.files.insert(path);
        }
        Ok(m)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

fn first_csv_field(line: &[u8]) -> Result<Vec<u8>, &'static str> {
    if line.first() != Some(&b'"') {
        let end = line.iter().position(|&b| b == b',').unwrap_or(line.len());
        return Ok(line[..end].trim_ascii().to_vec());
    }
    let mut out = Vec::new();
    let mut i = 1;
    while i < line.len() {
        match line[i] {
            b'"' if line.get(i + 1) == Some(&b'"') => {
                out.push(b'"');
                i += 2;
            }
            b'"' => return Ok(out),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Err("unterminated quote")
}

fn compile(list: &[String]) -> Result<Vec<Vec<u8>>, FilterError> {
    let mut out = Vec::new();
    for spec in list {
        for raw in spec.split('|') {
            let p = raw.trim();
            if p.is_empty() {
                return Err(FilterError { pattern: spec.clone(), reason: "empty pattern between '|'" });
            }
            if p.contains('\0') {
                return Err(FilterError { pattern: spec.clone(), reason: "NUL byte" });
            }
            let p = p.trim_end_matches('/');
            let anchored = if p.starts_with('/') || p.starts_with('*') { p.to_string() } else { format!("*/{p}") };
            out.push(anchored.into_bytes());
        }
    }
    Ok(out)
}

/// `*`-only glob over bytes; iterative with single backtrack point, O(n·m) worst case.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] != b'*' && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// True when `pattern` matches `path` or one of its ancestors (`path` starts with '/').
fn matches_self_or_ancestor(pattern: &[u8], path: &[u8]) -> bool {
    if glob(pattern, path) {
        return true;
    }
    path.iter().enumerate().skip(1).any(|(i, &b)| b == b'/' && glob(pattern, &path[..i]))
}

/// Could something below directory `dir` match `pattern`?
fn may_match_below(pattern: &[u8], dir: &[u8]) -> bool {
    match pattern.iter().position(|&c| c == b'*') {
        // A wildcard can span any depth, so only the literal prefix before it can rule out.
        Some(star) => {
            let lit = &pattern[..star];
            let n = lit.len().min(dir.len());
            lit[..n] == dir[..n]
        }
        None => pattern.len() > dir.len() && pattern.starts_with(dir) && pattern[dir.len()] == b'/',
    }
}

impl Matcher {
    pub fn new(filters: &Filters) -> Result<Self, FilterError> {
        Ok(Matcher { include: compile(&filters.include)?, exclude: compile(&filters.exclude)?, manifest: None })
    }

    /// Also restricts everything to the paths the manifest lists.
    pub fn with_manifest(mut self, manifest: Manifest) -> Self {
        self.manifest = Some(std::sync::Arc::new(manifest));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty() && self.manifest.is_none()
    }

    fn slash(rel: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(rel.len() + 1);
        p.push(b'/');
        p.extend_from_slice(rel);
        p
    }

    fn excluded(&self, path: &[u8]) -> bool {
        self.exclude.iter().any(|p| matches_self_or_ancestor(p, path))
    }

    /// Whether a non-directory entry at `rel` (relative, no leading '/') is transferred.
    /// `parent_included` says an include pattern already matched an ancestor directory;
    /// excludes still apply below it.
    pub fn file_selected(&self, rel: &[u8], parent_included: bool) -> bool {
        if self.is_empty() {
            return true;
        }
        if let Some(m) = &self.manifest {
            if !m.files.contains(rel) {
                return false;
            }
        }
        let path = Self::slash(rel);
        !self.excluded(&path) && (parent_included || self.include.is_empty() || self.include.iter().any(|p| matches_self_or_ancestor(p, &path)))
    }

    /// A listed directory: `None` when it is skipped, else the `included` flag its scan
    /// carries (whether everything below it is included).
    pub fn scan_dir(&self, rel: &[u8], parent_included: bool) -> Option<bool> {
        match self.dir_decision(rel, parent_included) {
            DirDecision::Skip => None,
            DirDecision::Traverse => Some(false),
            DirDecision::Include => Some(true),
        }
    }

    /// Whether an entry found only at the destination is within the filters' reach, so sync
    /// may delete it and verify reports it: a file when selected, a directory only when it is
    /// included whole.
    pub fn covers(&self, rel: &[u8], is_dir: bool, parent_included: bool) -> bool {
        if is_dir {
            self.dir_decision(rel, parent_included) == DirDecision::Include
        } else {
            self.file_selected(rel, parent_included)
        }
    }

    pub fn dir_decision(&self, rel: &[u8], parent_included: bool) -> DirDecision {
        if let Some(m) = &self.manifest {
            // Only directories above listed files are visited, and never taken whole.
            if !rel.is_empty() && !m.dirs.contains(rel) {
                return DirDecision::Skip;
            }
            let plain = Matcher { manifest: None, ..self.clone() };
            return match plain.dir_decision(rel, parent_included) {
                DirDecision::Skip => DirDecision::Skip,
                _ => DirDecision::Traverse,
            };
        }
        if rel.is_empty() || self.is_empty() {
            return DirDecision::Include;
        }
        let path = Self::slash(rel);
        if self.excluded(&path) {
            return DirDecision::Skip;
        }
        if parent_included || self.include.is_empty() || self.include.iter().any(|p| matches_self_or_ancestor(p, &path)) {
            return DirDecision::Include;
        }
        if self.include.iter().any(|p| may_match_below(p, &path)) {
            DirDecision::Traverse
        } else {
            DirDecision::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(include: &[&str], exclude: &[&str]) -> Matcher {
        Matcher::new(&Filters { include: include.iter().map(|s| s.to_string()).collect(), exclude: exclude.iter().map(|s| s.to_string()).collect() }).unwrap()
    }

    /// DataSync's documented examples, plus the edge cases around them.
    #[test]
    fn simple_pattern_table() {
        let cases: &[(&[&str], &[&str], &str, bool)] = &[
            (&[], &["*/.snapshot"], "a/b/.snapshot/x", false),
            (&[], &["*/.snapshot"], ".snapshot", false), // "*" may be empty: "/.snapshot"
            (&[], &["*/.snapshot"], "a/.snapshotx", true),
            (&[], &["/dir"], "dir/file", false),
            (&[], &["/dir"], "dir", false),
            (&[], &["/dir"], "a/dir/file", true), // anchored: only at the root
            (&[], &["/dir"], "dir2/file", true),
            (&[], &["*.tmp"], "x/y.tmp", false),
            (&[], &["*.tmp"], "y.tmp", false),
            (&[], &["*.tmp"], "y.tmpx", true),
            (&[], &["/a|/b"], "b/c", false),
            (&[], &["/a|/b"], "c", true),
            (&[], &["temp"], "x/temp/y", false),
            (&["/photos"], &[], "photos/2024/a.jpg", true),
            (&["/photos"], &[], "docs/a.txt", false),
            (&["/photos"], &["*.raw"], "photos/a.raw", false),
            (&["*.jpg"], &[], "deep/er/a.jpg", true),
            (&["*.jpg"], &[], "deep/er/a.png", false),
        ];
        for (inc, exc, path, want) in cases {
            assert_eq!(m(inc, exc).file_selected(path.as_bytes(), false), *want, "include {inc:?} exclude {exc:?} path {path}");
        }
    }

    #[test]
    fn directory_decisions() {
        assert_eq!(m(&[], &["/skip"]).dir_decision(b"skip", false), DirDecision::Skip);
        assert_eq!(m(&["/a/b"], &[]).dir_decision(b"a", false), DirDecision::Traverse);
        assert_eq!(m(&["/a/b"], &[]).dir_decision(b"a/b", false), DirDecision::Include);
        assert_eq!(m(&["/a/b"], &[]).dir_decision(b"c", false), DirDecision::Skip);
        assert_eq!(m(&["*.jpg"], &[]).dir_decision(b"any/dir", false), DirDecision::Traverse);
    }

    #[test]
    fn excludes_apply_below_included_directories() {
        let f = m(&[], &["*.tmp|*/.snapshot"]);
        assert!(!f.file_selected(b"sub/deeper/b.tmp", true));
        assert_eq!(f.dir_decision(b"sub/.snapshot", true), DirDecision::Skip);
        let g = m(&["/photos"], &["*.raw"]);
        assert!(!g.file_selected(b"photos/x/a.raw", true));
        assert!(g.file_selected(b"photos/x/a.jpg", true));
    }

    #[test]
    fn bad_patterns_name_the_problem() {
        let err = Matcher::new(&Filters { include: vec![], exclude: vec!["a||b".into()] }).unwrap_err();
        assert!(err.to_string().contains("a||b"));
    }

    #[test]
    fn a_manifest_selects_only_its_paths_and_visits_only_their_directories() {
        let manifest = Manifest::parse(b"a/b/one.txt\n\"a/quoted, name.txt\",v1\n/top.txt\r\n\n").unwrap();
        assert_eq!(manifest.len(), 3);
        let f = m(&[], &["*.tmp"]).with_manifest(manifest);
        assert!(f.file_selected(b"a/b/one.txt", true));
        assert!(f.file_selected(b"a/quoted, name.txt", false));
        assert!(f.file_selected(b"top.txt", false));
        assert!(!f.file_selected(b"a/b/two.txt", true), "not listed, even below an included directory");
        assert_eq!(f.dir_decision(b"a", false), DirDecision::Traverse);
        assert_eq!(f.dir_decision(b"a/b", true), DirDecision::Traverse);
        assert_eq!(f.dir_decision(b"c", false), DirDecision::Skip);
        assert_eq!(f.dir_decision(b"", false), DirDecision::Traverse);
        assert!(!f.covers(b"a/b", true, false), "a listed file's directory is not covered whole");
    }

    #[test]
    fn manifest_errors_name_the_line() {
        assert_eq!(Manifest::parse(b"ok\n../etc/passwd\n").unwrap_err().line, 2);
        assert_eq!(Manifest::parse(b"\"open\n").unwrap_err().line, 1);
        assert_eq!(Manifest::parse(b"a//b\n").unwrap_err().line, 1);
    }

    #[test]
    fn glob_handles_pathological_stars_quickly() {
        let text = vec![b'a'; 5000];
        let mut pat = b"*a*a*a*a*a*a*a*a*".to_vec();
        pat.push(b'b');
        assert!(!glob(&pat, &text));
    }
}
