//! Task reports: the coordinator's report of a task execution, filtered by the task's report
//! configuration when it ends and written to `{Destination}/{task}/{exec}.jsonl`, a directory
//! or an S3 prefix.
//!
//! While the execution runs, the leading coordinator appends the lines that travel with the
//! shard results to a work file: below `{Destination}/.ferry-work/` for a directory
//! destination, below the coordinator's `--report-work-dir` for an S3 one. Agents write
//! nothing there; only coordinators that may take over from each other need to share it.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use ferry_common::model::{Execution, ReportLines};
use ferry_common::task::{ReportLevel, ReportOutputType, TaskReportConfig};

pub fn is_s3(destination: &str) -> bool {
    destination.starts_with("s3://")
}

/// Which lines agents send for a report with this configuration.
pub fn lines_for(cfg: &TaskReportConfig) -> ReportLines {
    match (cfg.output_type, cfg.report_level) {
        (ReportOutputType::SummaryOnly, _) => ReportLines::None,
        (ReportOutputType::Standard, ReportLevel::ErrorsOnly) => ReportLines::Errors,
        (ReportOutputType::Standard, ReportLevel::SuccessesAndErrors) => ReportLines::All,
    }
}

/// Where the coordinator keeps an execution's report lines until the execution ends.
pub fn work_dir(destination: &str, s3_work_dir: Option<&Path>) -> Option<PathBuf> {
    if is_s3(destination) {
        return s3_work_dir.map(|d| d.join("s3-reports"));
    }
    Some(Path::new(destination.strip_prefix("file://").unwrap_or(destination)).join(".ferry-work"))
}

/// The report's name below the destination.
fn report_rel(exec: &Execution) -> String {
    format!("{}/{}.jsonl", exec.spec.task.as_deref().unwrap_or("adhoc"), exec.spec.id)
}

/// The final report's path or URI.
pub fn report_path(exec: &Execution, cfg: &TaskReportConfig) -> PathBuf {
    let dest = cfg.destination.strip_prefix("file://").unwrap_or(&cfg.destination);
    if is_s3(dest) {
        return PathBuf::from(format!("{}/{}", dest.trim_end_matches('/'), report_rel(exec)));
    }
    Path::new(dest).join(report_rel(exec))
}

fn keep(line: &serde_json::Value, cfg: &TaskReportConfig) -> bool {
    if line["type"] == "summary" {
        return true;
    }
    match (cfg.output_type, cfg.report_level) {
        (ReportOutputType::SummaryOnly, _) => false,
        (ReportOutputType::Standard, ReportLevel::SuccessesAndErrors) => true,
        (ReportOutputType::Standard, ReportLevel::ErrorsOnly) => line["status"] == "failed" || line["status"] == "mismatched",
    }
}

/// Filters the coordinator's report into its final place (temporary name, then rename; an S3
/// prefix gets an upload), then removes the work file. Idempotent: a leader that dies halfway
/// lets the next one redo it.
pub fn write_task_report(exec: &Execution, cfg: &TaskReportConfig) -> std::io::Result<PathBuf> {
    let s3 = is_s3(&cfg.destination);
    let work = exec.spec.report_file.as_ref().map(PathBuf::from).ok_or_else(|| std::io::Error::other("the execution has no report work file"))?;
    let work_dir = work.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&work_dir)?;
    let out = if s3 { work_dir.join(format!("{}.final.jsonl", exec.spec.id)) } else { report_path(exec, cfg) };
    let dir = out.parent().expect("a report path has a parent").to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{}.jsonl.tmp", exec.spec.id));
    {
        let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
        let mut summary = false;
        // An execution cancelled while queued never had a report written.
        if let Ok(f) = std::fs::File::open(&work) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                summary |= v["type"] == "summary";
                if keep(&v, cfg) {
                    w.write_all(line.as_bytes())?;
                    w.write_all(b"\n")?;
                }
            }
        }
        if !summary {
            serde_json::to_writer(&mut w, &crate::report::summary_json(exec))?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, &out)?;
    let out = if s3 {
        let uri = report_path(exec, cfg);
        upload(exec, &cfg.destination, &report_rel(exec), &out)
            .map_err(|e| std::io::Error::other(format!("cannot upload the report to {}: {e}", uri.display())))?;
        let _ = std::fs::remove_file(&out);
        uri
    } else {
        out
    };
    Ok(out)
}

/// Puts a report file under an S3 prefix, streamed through the location's sink (one PUT, or
/// parts), each piece with its CRC32C, then committed like any entry.
fn upload(exec: &Execution, prefix: &str, rel: &str, path: &Path) -> Result<(), ferry_common::error::FerryError> {
    use ferry_common::error::FerryError;
    use ferry_worker::location::{commit, CommitOptions, Meta, Target};
    use std::io::Read;
    let loc = ferry_worker::location::open(prefix, &exec.spec)?;
    let io = |e: std::io::Error| FerryError::config(format!("{}: {e}", path.display()));
    let size = std::fs::metadata(path).map_err(io)?.len();
    let meta = Meta {
        kind: Some(ferry_common::model::EntryKind::File),
        size,
        mtime: ferry_worker::location::local::now(),
        mode: Some(0o100644),
        ..Default::default()
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut sink = loc.create(rel.as_bytes(), Target::File { size, resume: None }, &meta, &Vec::new())?;
    let (mut pos, mut crc) = (0u64, 0u32);
    let mut buf = vec![0u8; 4 << 20];
    while pos < size {
        let n = ((size - pos) as usize).min(buf.len());
        if let Err(e) = file.read_exact(&mut buf[..n]).map_err(io).and_then(|()| sink.write_at(pos, &buf[..n], crc32c::crc32c(&buf[..n]))) {
            sink.abort();
            return Err(e);
        }
        crc = ferry_common::crc::combine(crc, crc32c::crc32c(&buf[..n]), n as u64);
        pos += n as u64;
    }
    let staged = sink.finish(crc)?;
    commit(loc.as_ref(), vec![staged], CommitOptions { fsync: true, verify: true }, &mut buf).pop().unwrap_or(Ok(None)).map(|_| ())
}
