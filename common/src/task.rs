//! Tasks: a transfer defined once (locations, options, filters, manifest, schedule and report
//! configuration) and run many times as executions.
//!
//! Field and value names are DataSync's (`VerifyMode`, `ONLY_FILES_TRANSFERRED`, ...), so a
//! DataSync user can read a ferry task as is. The JSON the HTTP API speaks and the value kept
//! in the Store (`/ferry/v1/tasks/{name}`) are the same struct.
//!
//! Validation happens when a task is created or updated and when an execution overrides
//! options, never later: [`Task::validate`] returns a [`FieldError`] naming the field. Values a
//! user cannot mean get `Invalid` (HTTP 400); valid values that do not go together, or that
//! ferry cannot honour, get `Unprocessable` (HTTP 422).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::filter::{Filters, Matcher};
use crate::model::{ExecutionSpec, LinkSettings, Mode, Options, OverwriteMode, OwnerIds, S3Settings, TransferMode, VerifyMode};

/// An error in a task or an override, with the field it is about (`Options.Atime`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The value is malformed or out of range (HTTP 400).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Valid values that do not go together, or that ferry cannot honour (HTTP 422).
    #[error("{field}: {message}")]
    Unprocessable { field: String, message: String },
}

impl FieldError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        FieldError::Invalid { field: field.into(), message: message.into() }
    }
    pub fn unprocessable(field: &str, message: impl Into<String>) -> Self {
        FieldError::Unprocessable { field: field.into(), message: message.into() }
    }
    pub fn field(&self) -> &str {
        match self {
            FieldError::Invalid { field, .. } | FieldError::Unprocessable { field, .. } => field,
        }
    }
}

macro_rules! datasync_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        // rename_all, not a per-variant rename: utoipa does not see renames passed in through
        // a macro, and the OpenAPI document must list the same names serde accepts (a test
        // checks that every `as_str` is the serde name).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }
        impl $name {
            #[cfg(test)]
            fn all() -> Vec<$name> {
                vec![$($name::$variant),+]
            }
        }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

datasync_enum!(VerifyModeOpt {
    /// Read back what was written and compare its CRC32C with the source's.
    OnlyFilesTransferred = "ONLY_FILES_TRANSFERRED",
    /// Also compare both complete trees at the end.
    PointInTimeConsistent = "POINT_IN_TIME_CONSISTENT",
    None = "NONE",
});
datasync_enum!(OverwriteModeOpt { Always = "ALWAYS", Never = "NEVER" });
datasync_enum!(TransferModeOpt { Changed = "CHANGED", All = "ALL" });
datasync_enum!(PreserveDeletedFilesOpt { Preserve = "PRESERVE", Remove = "REMOVE" });
datasync_enum!(PreserveDevicesOpt { None = "NONE", Preserve = "PRESERVE" });
datasync_enum!(AtimeOpt { None = "NONE", BestEffort = "BEST_EFFORT" });
datasync_enum!(MtimeOpt { None = "NONE", Preserve = "PRESERVE" });
datasync_enum!(IdOpt { None = "NONE", IntValue = "INT_VALUE", Name = "NAME", Both = "BOTH" });
datasync_enum!(PosixPermissionsOpt { None = "NONE", Preserve = "PRESERVE" });
datasync_enum!(TaskQueueingOpt { Enabled = "ENABLED", Disabled = "DISABLED" });
datasync_enum!(LogLevelOpt {
    Off = "OFF",
    /// Phase changes and errors.
    Basic = "BASIC",
    /// Also one line per transferred file.
    Transfer = "TRANSFER",
});
datasync_enum!(ObjectTagsOpt { Preserve = "PRESERVE", None = "NONE" });
datasync_enum!(ScheduleStatus { Enabled = "ENABLED", Disabled = "DISABLED" });
datasync_enum!(FilterType { SimplePattern = "SIMPLE_PATTERN" });
datasync_enum!(ReportOutputType { SummaryOnly = "SUMMARY_ONLY", Standard = "STANDARD" });
datasync_enum!(ReportLevel { ErrorsOnly = "ERRORS_ONLY", SuccessesAndErrors = "SUCCESSES_AND_ERRORS" });

/// A task's options. Every field is optional in requests; a stored task has all of them
/// filled with DataSync's defaults ([`TaskOptions::with_defaults`]), and an execution's
/// overrides are laid over them ([`TaskOptions::overlay`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct TaskOptions {
    pub verify_mode: Option<VerifyModeOpt>,
    pub overwrite_mode: Option<OverwriteModeOpt>,
    pub transfer_mode: Option<TransferModeOpt>,
    pub preserve_deleted_files: Option<PreserveDeletedFilesOpt>,
    pub preserve_devices: Option<PreserveDevicesOpt>,
    pub atime: Option<AtimeOpt>,
    pub mtime: Option<MtimeOpt>,
    pub uid: Option<IdOpt>,
    pub gid: Option<IdOpt>,
    pub posix_permissions: Option<PosixPermissionsOpt>,
    /// Bytes per second for each agent; -1 is unlimited.
    #[schema(minimum = -1)]
    pub bytes_per_second: Option<i64>,
    pub task_queueing: Option<TaskQueueingOpt>,
    pub log_level: Option<LogLevelOpt>,
    pub object_tags: Option<ObjectTagsOpt>,
    /// A sync (PreserveDeletedFiles REMOVE) from a source that holds nothing would delete
    /// everything at the destination: refused unless true (ferry's own option; `false` by
    /// default).
    pub allow_empty_source: Option<bool>,
}

macro_rules! overlay_fields {
    ($base:expr, $top:expr, $($f:ident),+) => {
        TaskOptions { $($f: $top.$f.or($base.$f)),+ }
    };
}

impl TaskOptions {
    /// DataSync's defaults.
    pub fn defaults() -> Self {
        TaskOptions {
            verify_mode: Some(VerifyModeOpt::OnlyFilesTransferred),
            overwrite_mode: Some(OverwriteModeOpt::Always),
            transfer_mode: Some(TransferModeOpt::Changed),
            preserve_deleted_files: Some(PreserveDeletedFilesOpt::Preserve),
            preserve_devices: Some(PreserveDevicesOpt::None),
            atime: Some(AtimeOpt::BestEffort),
            mtime: Some(MtimeOpt::Preserve),
            uid: Some(IdOpt::IntValue),
            gid: Some(IdOpt::IntValue),
            posix_permissions: Some(PosixPermissionsOpt::Preserve),
            bytes_per_second: Some(-1),
            task_queueing: Some(TaskQueueingOpt::Enabled),
            log_level: Some(LogLevelOpt::Basic),
            object_tags: Some(ObjectTagsOpt::Preserve),
            allow_empty_source: Some(false),
        }
    }

    /// `self`'s set fields win; the rest come from `base`.
    pub fn overlay(&self, base: &TaskOptions) -> TaskOptions {
        overlay_fields!(
            base,
            self,
            verify_mode,
            overwrite_mode,
            transfer_mode,
            preserve_deleted_files,
            preserve_devices,
            atime,
            mtime,
            uid,
            gid,
            posix_permissions,
            bytes_per_second,
            task_queueing,
            log_level,
            object_tags,
            allow_empty_source
        )
    }

    pub fn with_defaults(&self) -> TaskOptions {
        self.overlay(&TaskOptions::defaults())
    }

    /// Checks a complete set of options (after defaults and overrides).
    pub fn validate(&self) -> Result<(), FieldError> {
        let o = self.with_defaults();
        if let Some(bps) = o.bytes_per_second {
            if bps != -1 && bps < 1 {
                return Err(FieldError::invalid(
                    "Options.BytesPerSecond",
                    format!("{bps} is not a rate: give -1 (unlimited) or a positive number of bytes per second"),
                ));
            }
        }
        // DataSync's rules, with its wording.
        match (o.atime, o.mtime) {
            (Some(AtimeOpt::BestEffort), Some(MtimeOpt::None)) => {
                return Err(FieldError::unprocessable(
                    "Options.Atime",
                    "Atime=BEST_EFFORT needs Mtime=PRESERVE (set Atime=NONE with Mtime=NONE, or Mtime=PRESERVE)",
                ))
            }
            (Some(AtimeOpt::None), Some(MtimeOpt::Preserve)) => {
                return Err(FieldError::unprocessable("Options.Atime", "Atime=NONE needs Mtime=NONE (set Atime=BEST_EFFORT to keep Mtime=PRESERVE)"))
            }
            _ => {}
        }
        if o.preserve_deleted_files == Some(PreserveDeletedFilesOpt::Remove) && o.transfer_mode == Some(TransferModeOpt::All) {
            return Err(FieldError::unprocessable(
                "Options.PreserveDeletedFiles",
                "REMOVE needs TransferMode=CHANGED: with ALL the destination is not scanned, so nothing is known to delete",
            ));
        }
        // What ferry cannot honour yet is refused here rather than ignored at run time.
        if o.mtime == Some(MtimeOpt::None) {
            return Err(FieldError::unprocessable(
                "Options.Mtime",
                "NONE is not supported: ferry keeps mtime, which CHANGED detection relies on (use PRESERVE)",
            ));
        }
        if o.posix_permissions == Some(PosixPermissionsOpt::None) {
            return Err(FieldError::unprocessable("Options.PosixPermissions", "NONE is not supported: ferry always copies permission bits (use PRESERVE)"));
        }
        if o.uid.unwrap_or(IdOpt::IntValue) != o.gid.unwrap_or(IdOpt::IntValue) {
            return Err(FieldError::unprocessable(
                "Options.Gid",
                "Uid and Gid must have the same value (INT_VALUE, NAME, BOTH or NONE): ferry carries the owner and group together",
            ));
        }
        Ok(())
    }
}

/// One filter rule, as DataSync writes it: patterns separated by `|`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct FilterRule {
    #[serde(default = "simple_pattern")]
    pub filter_type: FilterType,
    pub value: String,
}

fn simple_pattern() -> FilterType {
    FilterType::SimplePattern
}

/// Builds the execution's filters from include and exclude rules, checking every pattern.
pub fn filters_of(includes: &[FilterRule], excludes: &[FilterRule]) -> Result<Filters, FieldError> {
    let filters = Filters { include: includes.iter().map(|r| r.value.clone()).collect(), exclude: excludes.iter().map(|r| r.value.clone()).collect() };
    for (field, list) in [("Includes", &filters.include), ("Excludes", &filters.exclude)] {
        Matcher::new(&Filters { include: list.clone(), exclude: vec![] }).map_err(|e| FieldError::invalid(field, e.to_string()))?;
    }
    Ok(filters)
}

/// A list of paths to transfer, one per line (CSV: the path is the first column), relative
/// to the source root. Only these are transferred and verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ManifestConfig {
    /// A local file (`/etc/ferry/manifest.csv`) or an S3 object (`s3://bucket/key.csv`).
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TaskSchedule {
    /// Cron: `minute hour day-of-month month day-of-week` (`0 2 * * *` is 02:00 daily).
    pub schedule_expression: String,
    /// An IANA time zone (`Europe/Paris`); UTC when unset.
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default = "schedule_enabled")]
    pub status: ScheduleStatus,
    /// Why the schedule was disabled: set by ferry when it disables a failing schedule.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// USER or SERVICE: who disabled the schedule.
    #[serde(default)]
    pub disabled_by: Option<String>,
}

fn schedule_enabled() -> ScheduleStatus {
    ScheduleStatus::Enabled
}

/// Where the per-execution report goes and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TaskReportConfig {
    /// A directory, or an S3 prefix (`s3://bucket/reports/`, reached with the task's S3
    /// settings). The report is written to `{Destination}/{task}/{execution}.jsonl`.
    pub destination: String,
    #[serde(default = "standard")]
    pub output_type: ReportOutputType,
    #[serde(default = "errors_only")]
    pub report_level: ReportLevel,
}

fn standard() -> ReportOutputType {
    ReportOutputType::Standard
}
fn errors_only() -> ReportLevel {
    ReportLevel::ErrorsOnly
}

/// Which agents reach the source and the destination (names or labels; empty: any).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct TaskAgents {
    pub source_agents: Vec<String>,
    pub destination_agents: Vec<String>,
    /// zstd on agent links.
    pub compress: bool,
}

/// S3 settings for S3 locations (see `ferry copy --help` for their meaning).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct TaskS3 {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub storage_class: Option<String>,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Task {
    /// Letters, digits, `-`, `_` and `.`; at most 64 characters. Unique.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    pub name: String,
    /// An absolute path (`/data`, `file:///data`) or `s3://bucket/prefix`.
    #[schema(pattern = "^(/|file://|s3://)")]
    pub source_location: String,
    #[schema(pattern = "^(/|file://|s3://)")]
    pub destination_location: String,
    #[serde(default)]
    pub options: TaskOptions,
    #[serde(default)]
    pub includes: Vec<FilterRule>,
    #[serde(default)]
    pub excludes: Vec<FilterRule>,
    #[serde(default)]
    pub manifest: Option<ManifestConfig>,
    #[serde(default)]
    pub schedule: Option<TaskSchedule>,
    #[serde(default)]
    pub task_report_config: Option<TaskReportConfig>,
    #[serde(default)]
    pub agents: TaskAgents,
    #[serde(default)]
    pub s3: TaskS3,
    /// Set by the server.
    #[serde(default)]
    pub created_unix_ms: u64,
}

/// What `PATCH /v1/tasks/{name}` may change; unset fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct TaskUpdate {
    pub options: Option<TaskOptions>,
    pub includes: Option<Vec<FilterRule>>,
    pub excludes: Option<Vec<FilterRule>>,
    pub manifest: Option<ManifestConfig>,
    /// Also used to re-enable a schedule that ferry disabled.
    pub schedule: Option<TaskSchedule>,
    pub task_report_config: Option<TaskReportConfig>,
    pub agents: Option<TaskAgents>,
}

/// What one execution changes from its task (`POST /v1/tasks/{name}/start`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct StartOverrides {
    pub override_options: Option<TaskOptions>,
    pub includes: Option<Vec<FilterRule>>,
    pub excludes: Option<Vec<FilterRule>>,
}

/// Scheduling rules the coordinator enforces on every task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulePolicy {
    /// Two consecutive firings are at least this far apart.
    pub min_interval_secs: u64,
}

impl Default for SchedulePolicy {
    fn default() -> Self {
        // DataSync's minimum.
        SchedulePolicy { min_interval_secs: 3600 }
    }
}

pub const MAX_TASK_NAME: usize = 64;

fn check_name(name: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > MAX_TASK_NAME {
        return Err(FieldError::invalid("Name", format!("must be 1 to {MAX_TASK_NAME} characters")));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) || name.starts_with('.') {
        return Err(FieldError::invalid("Name", format!("{name:?} may hold only letters, digits, '-', '_' and '.' (and not start with '.')")));
    }
    Ok(())
}

fn check_location(field: &str, uri: &str) -> Result<(), FieldError> {
    if uri.trim().is_empty() {
        return Err(FieldError::invalid(field, "is empty: give a path (/data) or an S3 location (s3://bucket/prefix)"));
    }
    if uri.contains('\0') {
        return Err(FieldError::invalid(field, "contains a NUL byte"));
    }
    let known = uri.starts_with('/') || uri.starts_with("file://") || uri.starts_with("s3://");
    if !known {
        return Err(FieldError::invalid(field, format!("{uri:?} is not a location ferry knows: give an absolute path (/data) or s3://bucket/prefix")));
    }
    if uri.starts_with('/') && uri.split('/').any(|c| c == "..") {
        return Err(FieldError::invalid(field, format!("{uri:?} contains '..': give the path without it")));
    }
    Ok(())
}

/// A location as comparable text: `file://` dropped, `.` and repeated or trailing `/` gone.
fn normalized(uri: &str) -> String {
    let (scheme, path) = match uri.strip_prefix("s3://") {
        Some(rest) => ("s3://", rest),
        None => ("", uri.strip_prefix("file://").unwrap_or(uri)),
    };
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let lead = if scheme.is_empty() { "/" } else { scheme };
    format!("{lead}{}", parts.join("/"))
}

/// Whether location `inner` is `outer` or lies below it (whole path components).
pub fn location_within(inner: &str, outer: &str) -> bool {
    let (i, o) = (normalized(inner), normalized(outer));
    i == o || (i.starts_with(&o) && (o.ends_with('/') || i.as_bytes().get(o.len()) == Some(&b'/')))
}

/// Most bytes a manifest may hold: every worker keeps it in memory.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Opens a local file without blocking (a FIFO would wait for a writer forever) and checks
/// what it is before anything is read: `Ok(None)` when it is not there.
fn stat_local(path: &str) -> std::io::Result<Option<std::fs::Metadata>> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => f.metadata().map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Task {
    /// Checks what the task names on this host, where it is there: the manifest must be a
    /// regular file of at most [`MAX_MANIFEST_BYTES`] (not `/dev/zero`, not a FIFO), and a
    /// report destination must be a directory. Agents check again where they read them.
    pub fn check_local_files(&self) -> Result<(), FieldError> {
        let local = |uri: &str| (!uri.starts_with("s3://")).then(|| uri.strip_prefix("file://").unwrap_or(uri).to_string());
        if let Some(path) = self.manifest.as_ref().and_then(|m| local(&m.source)) {
            match stat_local(&path) {
                Ok(Some(m)) if !m.is_file() => {
                    return Err(FieldError::unprocessable("Manifest.Source", format!("{path} is not a regular file: give a file listing one path per line")))
                }
                Ok(Some(m)) if m.len() > MAX_MANIFEST_BYTES => {
                    return Err(FieldError::unprocessable(
                        "Manifest.Source",
                        format!("{path} holds {} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may (split the task)", m.len()),
                    ))
                }
                Err(e) => return Err(FieldError::unprocessable("Manifest.Source", format!("{path}: {e} (make it readable by the coordinator)"))),
                _ => {}
            }
        }
        if let Some(path) = self.task_report_config.as_ref().and_then(|r| local(&r.destination)) {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
                return Err(FieldError::unprocessable("TaskReportConfig.Destination", format!("{path} is not a directory: give a directory for the reports")));
            }
        }
        Ok(())
    }

    /// Checks the task's locations against `allowed` ([`crate::config::CoordinatorSection::allowed_roots`]):
    /// each must be one of them or below one. Empty allows anything.
    pub fn check_roots(&self, allowed: &[String]) -> Result<(), FieldError> {
        if allowed.is_empty() {
            return Ok(());
        }
        let mut named = vec![("SourceLocation", &self.source_location), ("DestinationLocation", &self.destination_location)];
        if let Some(m) = &self.manifest {
            named.push(("Manifest.Source", &m.source));
        }
        if let Some(r) = &self.task_report_config {
            named.push(("TaskReportConfig.Destination", &r.destination));
        }
        for (field, uri) in named {
            if !allowed.iter().any(|root| location_within(uri, root)) {
                return Err(FieldError::unprocessable(
                    field,
                    format!(
                        "{uri} is outside the locations this coordinator serves ({}); ask its operator to add it to [coordinator] allowed_roots",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks the whole task and fills option defaults. Called on create and on update.
    pub fn validate(&mut self, policy: &SchedulePolicy) -> Result<(), FieldError> {
        check_name(&self.name)?;
        check_location("SourceLocation", &self.source_location)?;
        check_location("DestinationLocation", &self.destination_location)?;
        if location_within(&self.source_location, &self.destination_location) && location_within(&self.destination_location, &self.source_location) {
            return Err(FieldError::unprocessable("DestinationLocation", "is the source location: give a different destination"));
        }
        // As `ferry copy` refuses: a destination inside the source copies itself forever, and
        // a sync into a destination that holds the source deletes the source.
        if location_within(&self.destination_location, &self.source_location) {
            return Err(FieldError::unprocessable(
                "DestinationLocation",
                format!("{} is inside the source {}: choose a destination outside the source tree", self.destination_location, self.source_location),
            ));
        }
        if location_within(&self.source_location, &self.destination_location) {
            return Err(FieldError::unprocessable(
                "SourceLocation",
                format!("{} is inside the destination {}: a sync would delete it; choose another destination", self.source_location, self.destination_location),
            ));
        }
        self.options = self.options.with_defaults();
        self.options.validate()?;
        filters_of(&self.includes, &self.excludes)?;
        if let Some(m) = &self.manifest {
            check_location("Manifest.Source", &m.source)?;
            if self.options.preserve_deleted_files == Some(PreserveDeletedFilesOpt::Remove) {
                return Err(FieldError::unprocessable(
                    "Manifest",
                    "a manifest cannot be combined with PreserveDeletedFiles=REMOVE: only listed paths are looked at, so nothing is known to delete",
                ));
            }
        }
        if let Some(r) = &self.task_report_config {
            check_location("TaskReportConfig.Destination", &r.destination)?;
        }
        if let Some(s) = &self.schedule {
            crate::schedule::CronSchedule::parse(&s.schedule_expression, s.time_zone.as_deref())?.check_interval(policy)?;
        }
        if self.s3.sse.as_deref().is_some_and(|s| s != "AES256" && s != "aws:kms") {
            return Err(FieldError::invalid("S3.Sse", "must be AES256 or aws:kms"));
        }
        Ok(())
    }

    /// Applies an update; the result still has to pass [`Task::validate`].
    pub fn apply(&mut self, u: TaskUpdate) {
        if let Some(o) = u.options {
            self.options = o.overlay(&self.options);
        }
        if let Some(v) = u.includes {
            self.includes = v;
        }
        if let Some(v) = u.excludes {
            self.excludes = v;
        }
        if let Some(v) = u.manifest {
            self.manifest = Some(v);
        }
        if let Some(v) = u.schedule {
            self.schedule = Some(v);
        }
        if let Some(v) = u.task_report_config {
            self.task_report_config = Some(v);
        }
        if let Some(v) = u.agents {
            self.agents = v;
        }
    }

    pub fn queueing(&self) -> bool {
        self.options.with_defaults().task_queueing != Some(TaskQueueingOpt::Disabled)
    }

    /// The execution this task runs with these overrides. `id` is the new execution's id.
    pub fn execution_spec(&self, id: &str, o: &StartOverrides) -> Result<ExecutionSpec, FieldError> {
        let opts = match &o.override_options {
            Some(ov) => ov.overlay(&self.options).with_defaults(),
            None => self.options.with_defaults(),
        };
        opts.validate().map_err(|e| match e {
            FieldError::Invalid { field, message } => FieldError::Invalid { field: field.replacen("Options", "OverrideOptions", 1), message },
            FieldError::Unprocessable { field, message } => FieldError::Unprocessable { field: field.replacen("Options", "OverrideOptions", 1), message },
        })?;
        let filters = filters_of(o.includes.as_deref().unwrap_or(&self.includes), o.excludes.as_deref().unwrap_or(&self.excludes))?;
        let remove = opts.preserve_deleted_files == Some(PreserveDeletedFilesOpt::Remove);
        if remove && self.manifest.is_some() {
            return Err(FieldError::unprocessable("OverrideOptions.PreserveDeletedFiles", "REMOVE cannot be used with the task's manifest"));
        }
        let options = Options {
            verify: match opts.verify_mode {
                Some(VerifyModeOpt::PointInTimeConsistent) => VerifyMode::PointInTimeConsistent,
                Some(VerifyModeOpt::None) => VerifyMode::None,
                _ => VerifyMode::OnlyFilesTransferred,
            },
            transfer_mode: if opts.transfer_mode == Some(TransferModeOpt::All) { TransferMode::All } else { TransferMode::Changed },
            overwrite: if opts.overwrite_mode == Some(OverwriteModeOpt::Never) { OverwriteMode::Never } else { OverwriteMode::Always },
            remove_deleted: remove,
            preserve_devices: opts.preserve_devices == Some(PreserveDevicesOpt::Preserve),
            preserve_owner: opts.uid != Some(IdOpt::None),
            owner_ids: match opts.uid {
                Some(IdOpt::Name) => OwnerIds::Name,
                Some(IdOpt::Both) => OwnerIds::Both,
                _ => OwnerIds::Numeric,
            },
            filters,
            manifest: self.manifest.as_ref().map(|m| m.source.clone()),
            allow_empty_source: opts.allow_empty_source == Some(true),
            ..Options::default()
        };
        let bps = opts.bytes_per_second.unwrap_or(-1);
        Ok(ExecutionSpec {
            id: id.to_string(),
            mode: if remove { Mode::Sync } else { Mode::Copy },
            source: self.source_location.clone(),
            destination: self.destination_location.clone(),
            options,
            report_file: None,
            report_lines: Default::default(),
            s3: S3Settings {
                endpoint_url: self.s3.endpoint_url.clone(),
                region: self.s3.region.clone(),
                path_style: self.s3.path_style.unwrap_or(self.s3.endpoint_url.is_some()),
                storage_class: self.s3.storage_class.clone(),
                sse: self.s3.sse.clone(),
                sse_kms_key_id: self.s3.sse_kms_key_id.clone(),
                preserve_tags: opts.object_tags == Some(ObjectTagsOpt::Preserve),
            },
            link: LinkSettings {
                source_agents: self.agents.source_agents.clone(),
                destination_agents: self.agents.destination_agents.clone(),
                compress: self.agents.compress,
                bytes_per_second: if bps > 0 { bps as u64 } else { 0 },
            },
            task: Some(self.name.clone()),
            log_level: opts.log_level,
            trace_parent: None,
        })
    }
}

/// A state change of a task, an execution or an agent (`/ferry/v1/events/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    pub time_unix_ms: u64,
    /// TaskCreated, TaskUpdated, TaskDeleted, ScheduleFired, ScheduleMissed, ScheduleDisabled,
    /// ExecutionQueued, ExecutionPhase, ExecutionFinished, ReportWritten, AgentOnline,
    /// AgentOffline, ...
    pub kind: String,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub execution: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    pub message: String,
}

impl Event {
    pub fn new(time_unix_ms: u64, kind: &str, message: impl Into<String>) -> Self {
        Event { time_unix_ms, kind: kind.into(), task: None, execution: None, agent: None, message: message.into() }
    }
    pub fn task(mut self, t: &str) -> Self {
        self.task = Some(t.to_string());
        self
    }
    pub fn execution(mut self, e: &str) -> Self {
        self.execution = Some(e.to_string());
        self
    }
    pub fn agent(mut self, a: &str) -> Self {
        self.agent = Some(a.to_string());
        self
    }
    /// The Store key: time-ordered, unique per event. Events of one process in one
    /// millisecond keep their order through a process-wide sequence; the random tail keeps
    /// two coordinators' keys apart.
    pub fn key(&self) -> Vec<u8> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let unique = format!("{seq:012x}{:04x}", rand::random::<u16>());
        crate::keys::event(self.time_unix_ms, &unique)
    }
}

/// Settings of a running execution that can change while it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecSettings {
    /// 0: unlimited.
    pub bytes_per_second: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        serde_json::from_value(serde_json::json!({
            "Name": "nightly",
            "SourceLocation": "/data",
            "DestinationLocation": "/backup",
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_datasyncs() {
        let mut t = task();
        t.validate(&SchedulePolicy::default()).unwrap();
        assert_eq!(t.options.verify_mode, Some(VerifyModeOpt::OnlyFilesTransferred));
        assert_eq!(t.options.task_queueing, Some(TaskQueueingOpt::Enabled));
        assert_eq!(t.options.bytes_per_second, Some(-1));
        let spec = t.execution_spec("e1", &StartOverrides::default()).unwrap();
        assert_eq!(spec.mode, Mode::Copy);
        assert_eq!(spec.task.as_deref(), Some("nightly"));
    }

    #[test]
    fn invalid_combinations_name_the_field() {
        let mut t = task();
        t.options.atime = Some(AtimeOpt::BestEffort);
        t.options.mtime = Some(MtimeOpt::None);
        let e = t.validate(&SchedulePolicy::default()).unwrap_err();
        assert!(matches!(e, FieldError::Unprocessable { .. }));
        assert_eq!(e.field(), "Options.Atime");

        let mut t = task();
        t.options.preserve_deleted_files = Some(PreserveDeletedFilesOpt::Remove);
        t.options.transfer_mode = Some(TransferModeOpt::All);
        assert_eq!(t.validate(&SchedulePolicy::default()).unwrap_err().field(), "Options.PreserveDeletedFiles");

        let mut t = task();
        t.options.bytes_per_second = Some(0);
        assert!(matches!(t.validate(&SchedulePolicy::default()).unwrap_err(), FieldError::Invalid { .. }));

        let mut t = task();
        t.name = "../x".into();
        assert_eq!(t.validate(&SchedulePolicy::default()).unwrap_err().field(), "Name");

        let mut t = task();
        t.excludes = vec![FilterRule { filter_type: FilterType::SimplePattern, value: "a||b".into() }];
        assert_eq!(t.validate(&SchedulePolicy::default()).unwrap_err().field(), "Excludes");
    }

    #[test]
    fn owners_by_name_are_accepted_and_uid_and_gid_must_agree() {
        for (opt, ids, kept) in [
            (IdOpt::IntValue, OwnerIds::Numeric, true),
            (IdOpt::Name, OwnerIds::Name, true),
            (IdOpt::Both, OwnerIds::Both, true),
            (IdOpt::None, OwnerIds::Numeric, false),
        ] {
            let mut t = task();
            (t.options.uid, t.options.gid) = (Some(opt), Some(opt));
            t.validate(&SchedulePolicy::default()).unwrap();
            let spec = t.execution_spec("e", &StartOverrides::default()).unwrap();
            assert_eq!((spec.options.owner_ids, spec.options.preserve_owner), (ids, kept), "{opt:?}");
        }
        let mut t = task();
        (t.options.uid, t.options.gid) = (Some(IdOpt::Name), Some(IdOpt::IntValue));
        let e = t.validate(&SchedulePolicy::default()).unwrap_err();
        assert_eq!(e.field(), "Options.Gid");
    }

    #[test]
    fn unknown_values_and_fields_are_refused_by_the_decoder() {
        let bad = serde_json::json!({"Name": "t", "SourceLocation": "/a", "DestinationLocation": "/b", "Options": {"VerifyMode": "SOMETIMES"}});
        assert!(serde_json::from_value::<Task>(bad).unwrap_err().to_string().contains("SOMETIMES"));
        let typo = serde_json::json!({"Name": "t", "SourceLocation": "/a", "DestinationLocation": "/b", "Optoins": {}});
        assert!(serde_json::from_value::<Task>(typo).is_err());
    }

    #[test]
    fn overrides_win_and_are_validated() {
        let mut t = task();
        t.validate(&SchedulePolicy::default()).unwrap();
        let o = StartOverrides {
            override_options: Some(TaskOptions {
                preserve_deleted_files: Some(PreserveDeletedFilesOpt::Remove),
                bytes_per_second: Some(1 << 20),
                ..Default::default()
            }),
            excludes: Some(vec![FilterRule { filter_type: FilterType::SimplePattern, value: "*.tmp".into() }]),
            ..Default::default()
        };
        let spec = t.execution_spec("e2", &o).unwrap();
        assert_eq!(spec.mode, Mode::Sync);
        assert_eq!(spec.link.bytes_per_second, 1 << 20);
        assert_eq!(spec.options.filters.exclude, vec!["*.tmp".to_string()]);
        let bad = StartOverrides {
            override_options: Some(TaskOptions {
                transfer_mode: Some(TransferModeOpt::All),
                preserve_deleted_files: Some(PreserveDeletedFilesOpt::Remove),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(t.execution_spec("e3", &bad).unwrap_err().field(), "OverrideOptions.PreserveDeletedFiles");
    }

    #[test]
    fn serde_names_are_datasyncs() {
        fn check<T: Serialize + Copy>(all: Vec<T>, text: fn(T) -> &'static str) {
            for v in all {
                assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(text(v)));
            }
        }
        check(VerifyModeOpt::all(), VerifyModeOpt::as_str);
        check(OverwriteModeOpt::all(), OverwriteModeOpt::as_str);
        check(TransferModeOpt::all(), TransferModeOpt::as_str);
        check(PreserveDeletedFilesOpt::all(), PreserveDeletedFilesOpt::as_str);
        check(PreserveDevicesOpt::all(), PreserveDevicesOpt::as_str);
        check(AtimeOpt::all(), AtimeOpt::as_str);
        check(MtimeOpt::all(), MtimeOpt::as_str);
        check(IdOpt::all(), IdOpt::as_str);
        check(PosixPermissionsOpt::all(), PosixPermissionsOpt::as_str);
        check(TaskQueueingOpt::all(), TaskQueueingOpt::as_str);
        check(LogLevelOpt::all(), LogLevelOpt::as_str);
        check(ObjectTagsOpt::all(), ObjectTagsOpt::as_str);
        check(ScheduleStatus::all(), ScheduleStatus::as_str);
        check(FilterType::all(), FilterType::as_str);
        check(ReportOutputType::all(), ReportOutputType::as_str);
        check(ReportLevel::all(), ReportLevel::as_str);
    }

    #[test]
    fn stored_tasks_round_trip_through_the_codec() {
        let mut t = task();
        t.schedule = Some(TaskSchedule {
            schedule_expression: "0 2 * * *".into(),
            time_zone: Some("Europe/Paris".into()),
            status: ScheduleStatus::Enabled,
            disabled_reason: None,
            disabled_by: None,
        });
        t.validate(&SchedulePolicy::default()).unwrap();
        let bytes = crate::codec::encode(&t).unwrap();
        assert_eq!(crate::codec::decode::<Task>(&bytes).unwrap(), t);
    }
}

#[cfg(test)]
mod containment_tests {
    use super::*;

    #[test]
    fn locations_contain_by_whole_components() {
        assert!(location_within("/data/a/b", "/data"));
        assert!(location_within("file:///data/a/", "/data/"));
        assert!(location_within("/data//a/./b", "/data/a"));
        assert!(!location_within("/database", "/data"));
        assert!(location_within("s3://bucket/p/q", "s3://bucket"));
        assert!(!location_within("s3://bucket2/p", "s3://bucket"));
        assert!(!location_within("/bucket", "s3://bucket"));
        assert!(location_within("/anything", "/"));
    }

    #[test]
    fn allow_empty_source_is_a_task_option_off_by_default() {
        let mut t: Task = serde_json::from_value(serde_json::json!({ "Name": "t", "SourceLocation": "/a", "DestinationLocation": "/b" })).unwrap();
        t.validate(&SchedulePolicy::default()).unwrap();
        assert!(!t.execution_spec("e", &StartOverrides::default()).unwrap().options.allow_empty_source);
        t.options.allow_empty_source = Some(true);
        assert!(t.execution_spec("e", &StartOverrides::default()).unwrap().options.allow_empty_source);
    }
}
