//! A destination that does not exist yet, seen by a dry run: it holds nothing, so everything
//! would be copied, and it refuses every write (a dry run makes none).

use ferry_common::error::{ErrorKind, FerryError};

use super::{Capabilities, Completed, Durable, Limits, Location, Meta, Page, Profile, Sink, Source, Special, Staged, Target, Xattrs};

pub struct Empty {
    uri: String,
    profile: Profile,
}

impl Empty {
    /// Stands in for the location at `uri`, with its capabilities.
    pub fn new(uri: &str, profile: Profile) -> Self {
        Empty { uri: uri.trim_end_matches('/').to_string(), profile }
    }

    fn refused(&self, rel: &[u8]) -> FerryError {
        FerryError::new(ErrorKind::Config, format!("{} does not exist: a dry run writes nothing", self.describe(rel)))
    }
}

impl Location for Empty {
    fn describe(&self, rel: &[u8]) -> String {
        format!("{}/{}", self.uri, ferry_common::paths::display(rel))
    }
    fn capabilities(&self) -> Capabilities {
        self.profile.capabilities
    }
    fn limits(&self) -> Limits {
        self.profile.limits
    }
    fn list(&self, _dir: &[u8], _resume: Option<&[u8]>, _max: usize) -> Result<Page, FerryError> {
        Ok(Page::default())
    }
    fn stat(&self, _rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        Ok(None)
    }
    fn stat_dir(&self, _rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        Ok(None)
    }
    fn xattrs(&self, _rel: &[u8]) -> Result<Xattrs, FerryError> {
        Ok(Vec::new())
    }
    fn tags(&self, _rel: &[u8]) -> Result<Option<String>, FerryError> {
        Ok(None)
    }
    fn open(&self, rel: &[u8], _from: u64) -> Result<Box<dyn Source + '_>, FerryError> {
        Err(FerryError::new(ErrorKind::NotFound, format!("{} does not exist", self.describe(rel))))
    }
    fn create(&self, rel: &[u8], _target: Target<'_>, _meta: &Meta, _xattrs: &Xattrs) -> Result<Box<dyn Sink + '_>, FerryError> {
        Err(self.refused(rel))
    }
    fn make(&self, rel: &[u8], _special: &Special, _meta: &Meta, _xattrs: &Xattrs) -> Result<Staged, FerryError> {
        Err(self.refused(rel))
    }
    fn ensure_dir(&self, rel: &[u8]) -> Result<(), FerryError> {
        Err(self.refused(rel))
    }
    fn set_meta(&self, rel: &[u8], _meta: &Meta, _xattrs: Option<&Xattrs>) -> Result<(), FerryError> {
        Err(self.refused(rel))
    }
    fn link(&self, _target: &[u8], rel: &[u8]) -> Result<bool, FerryError> {
        Err(self.refused(rel))
    }
    fn sync(&self, _staged: &[Staged], _what: Durable) -> Result<(), FerryError> {
        Ok(())
    }
    fn check(&self, _staged: &Staged, _buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
        Ok(None)
    }
    fn publish(&self, staged: &Staged) -> Result<(), FerryError> {
        Err(self.refused(&staged.rel))
    }
    fn discard(&self, _staged: &Staged) {}
    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        rels.iter().map(|r| Err(self.refused(r))).collect()
    }
    fn sweep(&self, _dir: &[u8]) -> Result<(), FerryError> {
        Ok(())
    }
    fn create_multipart(&self, rel: &[u8], _size: u64, _meta: &Meta) -> Result<String, FerryError> {
        Err(self.refused(rel))
    }
    fn complete_multipart(&self, rel: &[u8], _upload: &str, _done: &Completed<'_>) -> Result<Staged, FerryError> {
        Err(self.refused(rel))
    }
    fn abort_multipart(&self, _rel: &[u8], _upload: &str) -> Result<(), FerryError> {
        Ok(())
    }
}
