//! Everything an agent needs to run the shards of one execution, chosen once when it joins.

use std::sync::{Arc, OnceLock};

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::filter::Matcher;
use ferry_common::keys::ExecKeys;
use ferry_common::model::{ExecutionSpec, Mode, Options, OwnerIds, Reach};

use super::hooks::TestHooks;
use super::owners::{DestNames, HostNames, OwnerMapped};
use crate::lease::LeaseClock;
use crate::location::{self, empty::Empty, CommitOptions, Location, Profile, SharedLocation};
use crate::rate::RateLimiter;

/// Which locations this agent reaches, decided once per execution.
pub enum Sides {
    /// Both: every shard runs here, and writes go to an in-process writer.
    Both { src: SharedLocation, dst: SharedLocation },
    /// Only the source: shards that read run here, and their writes cross a link to an
    /// agent that reaches the destination.
    Reader { src: SharedLocation },
    /// Only the destination: this agent writes for readers at other sites, and runs the
    /// shards that need nothing of the source (commits, hard links, directory metadata).
    Writer { dst: SharedLocation },
}

pub struct ExecContext {
    pub spec: ExecutionSpec,
    pub keys: ExecKeys,
    pub sides: Sides,
    /// What the source and the destination can hold, known even where they are not reached.
    pub src_profile: Profile,
    pub dst_profile: Profile,
    pub matcher: Matcher,
    pub hooks: TestHooks,
    /// The lease of the worker running this execution's shards; set when movers start.
    pub lease: OnceLock<Arc<LeaseClock>>,
    /// BytesPerSecond of this execution on this agent; it follows changes made while the
    /// execution runs (the movers' watch refreshes it).
    pub rate: RateLimiter,
    /// Who answers for the destination host's user and group names, where owners travel by
    /// name (see [`crate::engine::owners`]): this host where this process writes the
    /// destination; set by the movers of a reader, which ask a writer agent.
    pub dest_names: Arc<OnceLock<Arc<dyn DestNames>>>,
}

use ferry_common::task::MAX_MANIFEST_BYTES;

/// Reads and parses a manifest from a local file or an object.
fn load_manifest(uri: &str, spec: &ExecutionSpec) -> Result<ferry_common::filter::Manifest, FerryError> {
    let (dir, name) = match uri.rsplit_once('/') {
        Some((d, n)) if !n.is_empty() && !d.is_empty() && d != "s3:/" && d != "s3:" => (d, n),
        _ if !location::is_object_uri(uri) => ("/", uri.trim_start_matches("file://").trim_start_matches('/')),
        _ => return Err(FerryError::config(format!("manifest {uri}: give the object's full URI, s3://bucket/path/manifest.csv"))),
    };
    let missing = || FerryError::config(format!("manifest {uri} cannot be read (fix Manifest.Source, or make it readable on every agent)"));
    let loc = location::open(dir, spec).map_err(|e| FerryError::config(format!("manifest {uri}: {}", e.message)))?;
    let meta = loc.stat(name.as_bytes())?.ok_or_else(missing)?;
    if meta.kind() != ferry_common::model::EntryKind::File {
        return Err(FerryError::config(format!("manifest {uri} is a {}, not a regular file (give a file listing one path per line)", meta.kind().as_str())));
    }
    if meta.size > MAX_MANIFEST_BYTES {
        return Err(FerryError::config(format!("manifest {uri} is larger than {MAX_MANIFEST_BYTES} bytes (split the task)")));
    }
    let mut text = vec![0u8; meta.size as usize];
    loc.open(name.as_bytes(), 0)?.read_at(0, &mut text).map_err(|e| FerryError::config(format!("manifest {uri}: {}", e.message)))?;
    ferry_common::filter::Manifest::parse(&text).map_err(|e| FerryError::config(format!("manifest {uri}: {e}")))
}

/// A local destination that is missing is created, as DataSync does, when the submitter
/// could not create it: tasks and locations bound to agents are submitted by hosts that may
/// not see the destination at all, so the agents that write there create it.
fn create_destination(spec: &ExecutionSpec) -> Result<(), FerryError> {
    if !location::is_local_uri(&spec.destination) || !(spec.task.is_some() || spec.link.is_bound()) || spec.options.dry_run || spec.mode == Mode::Verify {
        return Ok(());
    }
    let path = location::local_path(&spec.destination);
    std::fs::create_dir_all(&path)
        .map_err(|e| FerryError::config(format!("cannot create destination {}: {e} (create it, or fix DestinationLocation)", path.display())))
}

fn open_destination(spec: &ExecutionSpec, profile: Profile) -> Result<SharedLocation, FerryError> {
    create_destination(spec)?;
    match location::open(&spec.destination, spec) {
        // A remote tree's directory is made by whoever opens it to write (see above).
        Ok(d) if location::is_nfs_uri(&spec.destination) && !spec.options.dry_run && spec.mode != Mode::Verify => d.ensure_dir(b"").map(|()| d),
        Ok(d) => Ok(d),
        // A dry run into a destination that does not exist yet: everything would be copied.
        Err(_) if spec.options.dry_run && location::is_local_uri(&spec.destination) => Ok(Arc::new(Empty::new(&spec.destination, profile))),
        Err(e) => Err(e),
    }
}

impl ExecContext {
    /// Opens both sides (one process reaches everything).
    pub fn open(spec: ExecutionSpec) -> Result<Self, FerryError> {
        Self::open_for(spec, Reach::BOTH)
    }

    /// Opens the sides this agent reaches.
    pub fn open_for(spec: ExecutionSpec, reach: Reach) -> Result<Self, FerryError> {
        let src_profile = location::profile(&spec.source)?;
        let dst_profile = location::profile(&spec.destination)?;
        let dest_names: Arc<OnceLock<Arc<dyn DestNames>>> = Arc::default();
        let by_name = spec.options.preserve_owner && spec.options.owner_ids != OwnerIds::Numeric;
        let open_source = || -> Result<SharedLocation, FerryError> {
            let src = location::open(&spec.source, &spec)?;
            Ok(if by_name && src_profile.capabilities.ownership && dst_profile.capabilities.ownership {
                Arc::new(OwnerMapped::new(src, spec.options.owner_ids, dest_names.clone()))
            } else {
                src
            })
        };
        let sides = match (reach.source, reach.destination) {
            (true, true) => {
                let _ = dest_names.set(Arc::new(HostNames));
                Sides::Both { src: open_source()?, dst: open_destination(&spec, dst_profile)? }
            }
            (true, false) => Sides::Reader { src: open_source()? },
            (false, true) => Sides::Writer { dst: open_destination(&spec, dst_profile)? },
            (false, false) => return Err(FerryError::config(format!("this agent reaches neither location of execution {}", spec.id))),
        };
        let mut matcher = Matcher::new(&spec.options.filters).map_err(|e| FerryError::config(e.to_string()))?;
        if let Some(uri) = &spec.options.manifest {
            matcher = matcher.with_manifest(load_manifest(uri, &spec)?);
        }
        let rate = RateLimiter::new(spec.link.bytes_per_second);
        Ok(ExecContext {
            keys: ExecKeys::new(&spec.id),
            spec,
            sides,
            src_profile,
            dst_profile,
            matcher,
            hooks: TestHooks::from_env(),
            lease: OnceLock::new(),
            rate,
            dest_names,
        })
    }

    /// Called before every change to the destination: waits while the lease's state is
    /// unknown (a keep-alive is overdue) and fails with `LeaseLost` once it is known gone, so a
    /// worker that stalled past its lease never writes over its successor's work.
    pub fn fence(&self) -> Result<(), FerryError> {
        match self.lease.get() {
            Some(lease) => lease.wait_valid(),
            None => Ok(()),
        }
    }

    pub fn options(&self) -> &Options {
        &self.spec.options
    }

    pub fn commit_options(&self) -> CommitOptions {
        CommitOptions { fsync: self.options().fsync, verify: self.options().verify != ferry_common::model::VerifyMode::None }
    }

    /// What this agent can reach of this execution.
    pub fn reach(&self) -> Reach {
        match &self.sides {
            Sides::Both { .. } => Reach::BOTH,
            Sides::Reader { .. } => Reach { source: true, destination: false },
            Sides::Writer { .. } => Reach { source: false, destination: true },
        }
    }

    /// The source, where this agent reaches it.
    pub fn src(&self) -> Result<&dyn Location, FerryError> {
        match &self.sides {
            Sides::Both { src, .. } | Sides::Reader { src } => Ok(src.as_ref()),
            Sides::Writer { .. } => Err(self.unreached("source")),
        }
    }

    /// The destination, where this agent reaches it.
    pub fn dst(&self) -> Result<&SharedLocation, FerryError> {
        match &self.sides {
            Sides::Both { dst, .. } | Sides::Writer { dst } => Ok(dst),
            Sides::Reader { .. } => Err(self.unreached("destination")),
        }
    }

    /// The destination as shards on this agent see it: in-process where reached.
    pub fn dst_if_reached(&self) -> Option<&dyn Location> {
        self.dst().ok().map(|d| d.as_ref())
    }

    fn unreached(&self, side: &str) -> FerryError {
        FerryError::new(
            ErrorKind::Config,
            format!("this agent does not reach the {side} of execution {} (a shard of the wrong kind was claimed; report a bug)", self.spec.id),
        )
    }

    /// Whether owner and group are kept: by the options, and where both sides have them.
    pub fn keeps_owner(&self) -> bool {
        self.options().preserve_owner && self.src_profile.capabilities.ownership && self.dst_profile.capabilities.ownership
    }

    /// Whether object tags are carried (ObjectTags PRESERVE between two object stores). A
    /// tree has none to give or keep: reading tags for it would only cost a request per file.
    pub fn carries_tags(&self) -> bool {
        self.spec.s3.preserve_tags && self.src_profile.capabilities.object_tags && self.dst_profile.capabilities.object_tags
    }

    /// Whether extended attributes are carried.
    pub fn keeps_xattrs(&self) -> bool {
        self.src_profile.capabilities.xattrs && self.dst_profile.capabilities.xattrs
    }
}
