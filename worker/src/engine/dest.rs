//! What shards that run on a reader (scan, part, prune, verify) need of the destination,
//! beyond streaming entries to a writer: the destination itself where this agent reaches it
//! ([`Direct`]), or the answers of an agent that does, over a link
//! (`crate::transport::remote::RemoteDest`). Batched, so that across a WAN a page of work
//! costs one round trip, not one per entry.

use std::collections::HashMap;

use ferry_common::error::FerryError;

use crate::engine::owners::{DestNames, OwnerIdsFound};
use crate::location::{Location, LocationExt, Meta, Page};

/// Most names of one destination directory held to compare a page against; a larger
/// directory is looked up entry by entry.
pub const LISTING_CAP: usize = 100_000;

pub trait Dest {
    fn describe(&self, rel: &[u8]) -> String;
    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError>;
    /// The destination's entries named `names` in `dir`, each with whether its metadata is
    /// complete (an object listing knows only size and time); `None` where absent.
    fn lookup(&self, dir: &[u8], names: &[Vec<u8>]) -> Result<Vec<Option<(Meta, bool)>>, FerryError>;
    /// Full metadata of each entry (`None` where absent).
    fn stat_many(&self, rels: &[Vec<u8>]) -> Vec<Result<Option<Meta>, FerryError>>;
    /// Each file's content CRC32C, as stored or by reading it where it is.
    fn checksums(&self, rels: &[Vec<u8>]) -> Vec<Result<u32, FerryError>>;
    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>>;
    /// Makes sure each directory exists (see [`Location::ensure_dir`]).
    fn ensure_dirs(&self, rels: &[Vec<u8>]) -> Vec<Result<(), FerryError>>;
    /// The multipart write of a `size`-byte file: an unfinished one an interrupted run left
    /// (resumed), or a new one. Returns its id and whether this call created it.
    fn open_upload(&self, rel: &[u8], size: u64, meta: &Meta) -> Result<(String, bool), FerryError>;
    fn abort_upload(&self, rel: &[u8], upload: &str) -> Result<(), FerryError>;
    /// The destination host's ids of these user and group names (see
    /// [`crate::engine::owners::DestNames`]).
    fn owner_ids(&self, users: &[String], groups: &[String]) -> Result<OwnerIdsFound, FerryError>;
}

/// The destination, reached in-process.
pub struct Direct<'a>(pub &'a dyn Location);

impl Dest for Direct<'_> {
    fn describe(&self, rel: &[u8]) -> String {
        self.0.describe(rel)
    }

    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError> {
        self.0.list(dir, resume, max)
    }

    fn lookup(&self, dir: &[u8], names: &[Vec<u8>]) -> Result<Vec<Option<(Meta, bool)>>, FerryError> {
        lookup(self.0, dir, names)
    }

    fn stat_many(&self, rels: &[Vec<u8>]) -> Vec<Result<Option<Meta>, FerryError>> {
        rels.iter().map(|r| self.0.stat(r)).collect()
    }

    fn checksums(&self, rels: &[Vec<u8>]) -> Vec<Result<u32, FerryError>> {
        checksums(self.0, rels)
    }

    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        self.0.remove(rels)
    }

    fn ensure_dirs(&self, rels: &[Vec<u8>]) -> Vec<Result<(), FerryError>> {
        rels.iter().map(|r| self.0.ensure_dir(r)).collect()
    }

    fn open_upload(&self, rel: &[u8], size: u64, meta: &Meta) -> Result<(String, bool), FerryError> {
        open_upload(self.0, rel, size, meta)
    }

    fn abort_upload(&self, rel: &[u8], upload: &str) -> Result<(), FerryError> {
        self.0.abort_multipart(rel, upload)
    }

    fn owner_ids(&self, users: &[String], groups: &[String]) -> Result<OwnerIdsFound, FerryError> {
        // In-process: this host writes the destination.
        crate::engine::owners::HostNames.ids(users, groups)
    }
}

/// [`Dest::lookup`] on a location: a `stat` each where that is cheap, else one listing of the
/// directory (a `stat` each past [`LISTING_CAP`] names).
pub fn lookup(loc: &dyn Location, dir: &[u8], names: &[Vec<u8>]) -> Result<Vec<Option<(Meta, bool)>>, FerryError> {
    let stat_each = |names: &[Vec<u8>]| -> Result<Vec<Option<(Meta, bool)>>, FerryError> {
        names.iter().map(|n| Ok(loc.stat(&ferry_common::paths::child(dir, n))?.map(|m| (m, true)))).collect()
    };
    if names.is_empty() {
        return Ok(Vec::new());
    }
    if loc.capabilities().cheap_stat {
        // A directory that is not there yet holds none of them (the first copy of a tree).
        if !dir.is_empty() && loc.stat_dir(dir)?.is_none_or(|m| m.kind() != ferry_common::model::EntryKind::Dir) {
            return Ok(vec![None; names.len()]);
        }
        return stat_each(names);
    }
    match loc.list_all(dir, LISTING_CAP) {
        Ok(Some(listed)) => {
            let by_name: HashMap<Vec<u8>, (Meta, bool)> = listed.into_iter().map(|l| (l.name, (l.meta, l.complete))).collect();
            Ok(names.iter().map(|n| by_name.get(n).cloned()).collect())
        }
        Ok(None) => stat_each(names),
        // The destination cannot even name this directory (a non-UTF-8 name on S3): it holds
        // none of it, and each entry is refused by name when it is written.
        Err(e) if e.kind == ferry_common::error::ErrorKind::Unsupported => Ok(vec![None; names.len()]),
        Err(e) => Err(e),
    }
}

/// [`Dest::checksums`] on a location.
pub fn checksums(loc: &dyn Location, rels: &[Vec<u8>]) -> Vec<Result<u32, FerryError>> {
    let mut buf = Vec::new();
    rels.iter()
        .map(|rel| {
            let meta = loc.stat(rel)?.ok_or_else(|| FerryError::new(ferry_common::error::ErrorKind::NotFound, format!("{} is missing", loc.describe(rel))))?;
            loc.checksum(rel, &meta, &mut buf).map(|(c, _)| c)
        })
        .collect()
}

/// [`Dest::open_upload`] on a location.
pub fn open_upload(loc: &dyn Location, rel: &[u8], size: u64, meta: &Meta) -> Result<(String, bool), FerryError> {
    if let Some(id) = loc.pending_multiparts(rel)?.pop() {
        return Ok((id, false));
    }
    Ok((loc.create_multipart(rel, size, meta)?, true))
}
