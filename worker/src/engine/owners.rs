//! Owners carried by name (DataSync's Uid/Gid `NAME` and `BOTH`).
//!
//! A source's numeric owner means something only on the hosts that share its user database.
//! Carried by name, the id is named where the source is read and that name is looked up
//! where the destination is written, which in a bound execution is another agent on another
//! host. The translation happens once, where source metadata enters the engine: the source
//! is wrapped in [`OwnerMapped`], so every shard kind (scan, transfer, part, verify, the
//! directory metadata) sees owners already in the destination's ids, compares them with the
//! destination's as they are, and sends them to the writer as plain numbers.
//!
//! [`OwnerMap`] holds the decisions (pure and cached per execution); [`DestNames`] answers
//! for the destination's host: [`HostNames`] where this process writes the destination, a
//! writer agent over the link otherwise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::OwnerIds;

use crate::location::local::sys;
use crate::location::{
    Capabilities, Completed, Durable, Limits, Location, Meta, Page, SharedLocation, Sink, Source, Special, Staged, StoredPart, Target, Xattrs,
};

/// The ids found for user names and for group names, in the order asked (`None`: unknown).
pub type OwnerIdsFound = (Vec<Option<u32>>, Vec<Option<u32>>);

/// The destination host's user and group databases.
pub trait DestNames: Send + Sync {
    /// The ids of `users` and `groups` on the destination's host, in order; `None` where a
    /// name is unknown there.
    fn ids(&self, users: &[String], groups: &[String]) -> Result<OwnerIdsFound, FerryError>;
}

/// This host's databases (through NSS: files, LDAP, SSSD...).
pub struct HostNames;

impl DestNames for HostNames {
    fn ids(&self, users: &[String], groups: &[String]) -> Result<OwnerIdsFound, FerryError> {
        Ok((users.iter().map(|n| sys::user_id(n)).collect(), groups.iter().map(|n| sys::group_id(n)).collect()))
    }
}

/// What became of one source id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    pub id: u32,
    /// Its name where the source is read.
    pub name: Option<String>,
    /// That name's id at the destination.
    pub mapped: Option<u32>,
}

/// Source ids to destination ids, learned as ids are met.
#[derive(Debug)]
pub struct OwnerMap {
    mode: OwnerIds,
    users: HashMap<u32, Option<u32>>,
    groups: HashMap<u32, Option<u32>>,
}

impl OwnerMap {
    pub fn new(mode: OwnerIds) -> Self {
        OwnerMap { mode, users: HashMap::new(), groups: HashMap::new() }
    }

    /// The user and group ids of `metas` not learned yet, each once.
    pub fn unknown<'a>(&self, metas: impl IntoIterator<Item = &'a Meta>) -> (Vec<u32>, Vec<u32>) {
        let (mut users, mut groups) = (Vec::new(), Vec::new());
        for m in metas {
            if let Some(u) = m.uid.filter(|u| !self.users.contains_key(u) && !users.contains(u)) {
                users.push(u);
            }
            if let Some(g) = m.gid.filter(|g| !self.groups.contains_key(g) && !groups.contains(g)) {
                groups.push(g);
            }
        }
        (users, groups)
    }

    /// Records what the ids in `users` and `groups` map to. Returns a warning for each id
    /// that cannot be carried by name.
    pub fn learn(&mut self, users: &[Learned], groups: &[Learned]) -> Vec<String> {
        let mut warnings = Vec::new();
        for (table, learned, what) in [(&mut self.users, users, "user"), (&mut self.groups, groups, "group")] {
            for l in learned {
                table.insert(l.id, l.mapped);
                if l.mapped.is_none() {
                    warnings.push(unmapped_warning(self.mode, what, l));
                }
            }
        }
        warnings
    }

    /// Rewrites the owner of `meta` into the destination's ids. Owner and group travel
    /// together (one chown), so when either cannot be carried neither is. An id not learned
    /// yet is not carried either, never guessed (callers learn first).
    pub fn apply(&self, meta: &mut Meta) {
        let uid = meta.uid.and_then(|u| carried(self.mode, u, self.users.get(&u).copied()));
        let gid = meta.gid.and_then(|g| carried(self.mode, g, self.groups.get(&g).copied()));
        (meta.uid, meta.gid) = uid.zip(gid).unzip();
    }
}

/// The destination id for source id `id`, given what its name maps to (`None`: not learned).
fn carried(mode: OwnerIds, id: u32, mapped: Option<Option<u32>>) -> Option<u32> {
    match (mode, mapped) {
        (OwnerIds::Numeric, _) => Some(id),
        (_, Some(Some(to))) => Some(to),
        (OwnerIds::Both, Some(None)) => Some(id),
        (OwnerIds::Name, Some(None)) | (_, None) => None,
    }
}

fn unmapped_warning(mode: OwnerIds, what: &str, l: &Learned) -> String {
    let why = match &l.name {
        None => format!("{what} id {} has no name on the host that reads the source", l.id),
        Some(n) => format!("{what} {n:?} (id {} at the source) does not exist on the destination's host", l.id),
    };
    match mode {
        OwnerIds::Both => format!("{why}: its entries keep the numeric id {}", l.id),
        _ => format!("{why}: its entries keep the writer's default owner and group (create the {what} there, or use Uid/Gid BOTH to fall back to the number)"),
    }
}

/// A source whose owners read as the destination's ids.
pub struct OwnerMapped {
    inner: SharedLocation,
    map: Mutex<OwnerMap>,
    dest: Arc<OnceLock<Arc<dyn DestNames>>>,
}

impl OwnerMapped {
    /// `dest` answers for the destination's host; it may be set after opening (a reader
    /// learns its writers once its movers start).
    pub fn new(inner: SharedLocation, mode: OwnerIds, dest: Arc<OnceLock<Arc<dyn DestNames>>>) -> Self {
        OwnerMapped { inner, map: Mutex::new(OwnerMap::new(mode)), dest }
    }

    fn map_all(&self, metas: &mut [&mut Meta]) -> Result<(), FerryError> {
        let (users, groups) = self.lock().unknown(metas.iter().map(|m| &**m));
        if !users.is_empty() || !groups.is_empty() {
            let dest = self.dest.get().ok_or_else(|| {
                FerryError::new(ErrorKind::Unavailable, "owner names cannot be looked up at the destination yet (no writer agent is reachable)")
            })?;
            let user_names: Vec<Option<String>> = users.iter().map(|&u| sys::user_name(u)).collect();
            let group_names: Vec<Option<String>> = groups.iter().map(|&g| sys::group_name(g)).collect();
            let asked_users: Vec<String> = user_names.iter().flatten().cloned().collect();
            let asked_groups: Vec<String> = group_names.iter().flatten().cloned().collect();
            let (mut uids, mut gids) = dest.ids(&asked_users, &asked_groups)?;
            if uids.len() != asked_users.len() || gids.len() != asked_groups.len() {
                return Err(FerryError::new(ErrorKind::Other, "the destination answered a different number of owner names than asked"));
            }
            let (mut uids, mut gids) = (uids.drain(..), gids.drain(..));
            let learned = |ids: &[u32], names: Vec<Option<String>>, found: &mut dyn Iterator<Item = Option<u32>>| -> Vec<Learned> {
                ids.iter().zip(names).map(|(&id, name)| Learned { id, mapped: name.as_ref().and_then(|_| found.next().flatten()), name }).collect()
            };
            let users = learned(&users, user_names, &mut uids);
            let groups = learned(&groups, group_names, &mut gids);
            for w in self.lock().learn(&users, &groups) {
                tracing::warn!("{w}");
            }
        }
        let map = self.lock();
        for m in metas.iter_mut() {
            map.apply(m);
        }
        Ok(())
    }

    fn mapped(&self, meta: Option<Meta>) -> Result<Option<Meta>, FerryError> {
        let Some(mut meta) = meta else {
            return Ok(None);
        };
        self.map_all(&mut [&mut meta])?;
        Ok(Some(meta))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OwnerMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Location for OwnerMapped {
    fn describe(&self, rel: &[u8]) -> String {
        self.inner.describe(rel)
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError> {
        let mut page = self.inner.list(dir, resume, max)?;
        self.map_all(&mut page.entries.iter_mut().map(|l| &mut l.meta).collect::<Vec<_>>())?;
        Ok(page)
    }
    fn stat(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        self.mapped(self.inner.stat(rel)?)
    }
    fn stat_dir(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        self.mapped(self.inner.stat_dir(rel)?)
    }
    fn xattrs(&self, rel: &[u8]) -> Result<Xattrs, FerryError> {
        self.inner.xattrs(rel)
    }
    fn tags(&self, rel: &[u8]) -> Result<Option<String>, FerryError> {
        self.inner.tags(rel)
    }
    fn open(&self, rel: &[u8], from: u64) -> Result<Box<dyn Source + '_>, FerryError> {
        let inner = self.inner.open(rel, from)?;
        let meta = self.mapped(Some(inner.meta().clone()))?.unwrap_or_default();
        Ok(Box::new(MappedSource { inner, meta }))
    }
    fn create(&self, rel: &[u8], target: Target<'_>, meta: &Meta, xattrs: &Xattrs) -> Result<Box<dyn Sink + '_>, FerryError> {
        self.inner.create(rel, target, meta, xattrs)
    }
    fn make(&self, rel: &[u8], special: &Special, meta: &Meta, xattrs: &Xattrs) -> Result<Staged, FerryError> {
        self.inner.make(rel, special, meta, xattrs)
    }
    fn ensure_dir(&self, rel: &[u8]) -> Result<(), FerryError> {
        self.inner.ensure_dir(rel)
    }
    fn set_meta(&self, rel: &[u8], meta: &Meta, xattrs: Option<&Xattrs>) -> Result<(), FerryError> {
        self.inner.set_meta(rel, meta, xattrs)
    }
    fn link(&self, target: &[u8], rel: &[u8]) -> Result<bool, FerryError> {
        self.inner.link(target, rel)
    }
    fn sync(&self, staged: &[Staged], what: Durable) -> Result<(), FerryError> {
        self.inner.sync(staged, what)
    }
    fn check(&self, staged: &Staged, buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
        self.inner.check(staged, buf)
    }
    fn publish(&self, staged: &Staged) -> Result<(), FerryError> {
        self.inner.publish(staged)
    }
    fn discard(&self, staged: &Staged) {
        self.inner.discard(staged)
    }
    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        self.inner.remove(rels)
    }
    fn sweep(&self, dir: &[u8]) -> Result<(), FerryError> {
        self.inner.sweep(dir)
    }
    fn create_multipart(&self, rel: &[u8], size: u64, meta: &Meta) -> Result<String, FerryError> {
        self.inner.create_multipart(rel, size, meta)
    }
    fn pending_multiparts(&self, rel: &[u8]) -> Result<Vec<String>, FerryError> {
        self.inner.pending_multiparts(rel)
    }
    fn list_parts(&self, rel: &[u8], upload: &str) -> Result<Vec<StoredPart>, FerryError> {
        self.inner.list_parts(rel, upload)
    }
    fn complete_multipart(&self, rel: &[u8], upload: &str, done: &Completed<'_>) -> Result<Staged, FerryError> {
        self.inner.complete_multipart(rel, upload, done)
    }
    fn abort_multipart(&self, rel: &[u8], upload: &str) -> Result<(), FerryError> {
        self.inner.abort_multipart(rel, upload)
    }
}

struct MappedSource<'a> {
    inner: Box<dyn Source + 'a>,
    meta: Meta,
}

impl Source for MappedSource<'_> {
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn xattrs(&mut self) -> Result<Xattrs, FerryError> {
        self.inner.xattrs()
    }
    fn data(&mut self, pos: u64) -> Result<Option<(u64, u64)>, FerryError> {
        self.inner.data(pos)
    }
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), FerryError> {
        self.inner.read_at(pos, buf)
    }
    fn unchanged(&mut self) -> Result<bool, FerryError> {
        self.inner.unchanged()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(uid: u32, gid: u32) -> Meta {
        Meta { uid: Some(uid), gid: Some(gid), ..Meta::default() }
    }

    fn learned(id: u32, name: Option<&str>, mapped: Option<u32>) -> Learned {
        Learned { id, name: name.map(str::to_string), mapped }
    }

    #[test]
    fn names_that_resolve_become_the_destinations_ids() {
        for mode in [OwnerIds::Name, OwnerIds::Both] {
            let mut map = OwnerMap::new(mode);
            let metas = [owned(1000, 100), owned(1000, 100), owned(1001, 100)];
            assert_eq!(map.unknown(&metas), (vec![1000, 1001], vec![100]), "each unknown id once");
            let warnings =
                map.learn(&[learned(1000, Some("alice"), Some(2000)), learned(1001, Some("bob"), Some(2001))], &[learned(100, Some("staff"), Some(50))]);
            assert!(warnings.is_empty());
            assert_eq!(map.unknown(&metas), (vec![], vec![]), "learned ids are not asked again");
            let mut m = owned(1001, 100);
            map.apply(&mut m);
            assert_eq!((m.uid, m.gid), (Some(2001), Some(50)));
        }
    }

    #[test]
    fn an_unnamed_or_unknown_id_is_dropped_by_name_and_kept_by_both() {
        let users = [learned(7, None, None), learned(8, Some("carol"), None)];
        let mut by_name = OwnerMap::new(OwnerIds::Name);
        let warnings = by_name.learn(&users, &[learned(9, Some("wheel"), Some(10))]);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("user id 7 has no name") && warnings[0].contains("BOTH"), "{}", warnings[0]);
        assert!(warnings[1].contains("\"carol\"") && warnings[1].contains("does not exist on the destination"), "{}", warnings[1]);
        let mut m = owned(8, 9);
        by_name.apply(&mut m);
        assert_eq!((m.uid, m.gid), (None, None), "NAME leaves an unmapped owner unset, and its group with it");

        let mut both = OwnerMap::new(OwnerIds::Both);
        let warnings = both.learn(&users, &[]);
        assert!(warnings.iter().all(|w| w.contains("keep the numeric id")), "{warnings:?}");
        let mut m = owned(8, 3);
        both.apply(&mut m);
        assert_eq!((m.uid, m.gid), (None, None), "an id never learned is not guessed");
        let mut m = owned(8, 8);
        both.learn(&[], &[learned(8, Some("eight"), Some(88))]);
        both.apply(&mut m);
        assert_eq!((m.uid, m.gid), (Some(8), Some(88)), "BOTH keeps the number");
    }

    #[test]
    fn numeric_mode_and_unowned_entries_pass_through() {
        let mut m = owned(5, 6);
        OwnerMap::new(OwnerIds::Numeric).apply(&mut m);
        assert_eq!((m.uid, m.gid), (Some(5), Some(6)));
        let map = OwnerMap::new(OwnerIds::Name);
        assert_eq!(map.unknown(&[Meta::default()]), (vec![], vec![]));
    }

    #[test]
    fn this_hosts_databases_name_root() {
        assert_eq!(sys::user_name(0).as_deref(), Some("root"));
        assert_eq!(sys::group_name(0).as_deref(), Some("root"));
        assert_eq!(HostNames.ids(&["root".into(), "no-such-user-ferry".into()], &["root".into()]).unwrap(), (vec![Some(0), None], vec![Some(0)]));
    }
}
