//! Task reports: merged from the workers' report lines when a task execution ends, filtered
//! by the task's report configuration, and written to `{Destination}/{task}/{exec}.jsonl`, a
//! directory or an S3 prefix.
//!
//! Workers write their lines to a work directory while the execution runs (the cluster report
//! mechanism: [`crate::cluster::merge_report`] keeps exactly the lines of committed shard
//! attempts): `{Destination}/.ferry-work/` for a directory destination, the coordinator's
//! `--report-work-dir` for an S3 one. In a cluster that directory must be shared by the
//! workers and the coordinators, like `ferry copy --report` in cluster mode.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use ferry_common::model::Execution;
use ferry_common::task::{ReportLevel, ReportOutputType, TaskReportConfig};

pub fn is_s3(destination: &str) -> bool {
    destination.starts_with("s3://")
}

/// Where workers write an execution's report lines before the merge.
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

/// Merges, filters and writes the report (temporary name, then rename), then removes the
/// execution's work files. Idempotent: a leader that dies halfway lets the next one redo it.
pub fn write_task_report(exec: &Execution, cfg: &TaskReportConfig) -> std::io::Result<PathBuf> {
    let work = PathBuf::from(exec.spec.report_dir.clone().ok_or_else(|| std::io::Error::other("the execution has no report work directory"))?);
    std::fs::create_dir_all(&work)?;
    let s3 = is_s3(&cfg.destination);
    let out = if s3 { work.join(format!("{}.final.jsonl", exec.spec.id)) } else { report_path(exec, cfg) };
    let dir = out.parent().expect("a report path has a parent").to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let merged = dir.join(format!(".{}.merged.tmp", exec.spec.id));
    crate::cluster::merge_report(&work, exec, &merged)?;
    let tmp = dir.join(format!(".{}.jsonl.tmp", exec.spec.id));
    {
        let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
        for line in BufReader::new(std::fs::File::open(&merged)?).lines() {
            let line = line?;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if keep(&v, cfg) {
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")?;
            }
        }
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, &out)?;
    let _ = std::fs::remove_file(&merged);
    let out = if s3 {
        let uri = report_path(exec, cfg);
        upload(exec, &cfg.destination, &report_rel(exec), &out).map_err(|e| std::io::Error::other(format!("cannot upload the report to {}: {e}", uri.display())))?;
        let _ = std::fs::remove_file(&out);
        uri
    } else {
        out
    };
    for ent in std::fs::read_dir(&work)?.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{}.", exec.spec.id)) {
            let _ = std::fs::remove_file(ent.path());
        }
    }
    Ok(out)
}

/// Puts a report file under an S3 prefix: one PUT up to 64 MiB, parts above, each with its
/// CRC32C and the whole object's CRC at completion.
fn upload(exec: &Execution, prefix: &str, rel: &str, path: &Path) -> Result<(), ferry_common::error::FerryError> {
    use std::io::Read;
    use ferry_worker::storage::{Content, Meta};
    const PART: u64 = 64 << 20;
    let loc = ferry_worker::storage::open(prefix, &exec.spec)?;
    let size = std::fs::metadata(path).map_err(|e| ferry_common::error::FerryError::config(format!("{}: {e}", path.display())))?.len();
    let now = ferry_common::schedule::now_ms();
    let meta = Meta {
        kind: Some(ferry_common::model::EntryKind::File),
        size,
        mtime: ferry_common::model::Timestamp { sec: (now / 1000) as i64, nsec: ((now % 1000) * 1_000_000) as u32 },
        mode: Some(0o100644),
        ..Default::default()
    };
    let mut file = std::fs::File::open(path).map_err(|e| ferry_common::error::FerryError::config(format!("{}: {e}", path.display())))?;
    let read_err = |e: std::io::Error| ferry_common::error::FerryError::config(format!("{}: {e}", path.display()));
    if size <= PART {
        let mut body = Vec::with_capacity(size as usize);
        file.read_to_end(&mut body).map_err(read_err)?;
        return loc.put(rel.as_bytes(), Content::File(&body), &meta, Some(crc32c::crc32c(&body)));
    }
    let upload = loc.create_multipart(rel.as_bytes(), size, &meta)?;
    let result = (|| {
        let (mut crc, mut pos, mut numbers) = (0u32, 0u64, Vec::new());
        let mut buf = vec![0u8; PART as usize];
        while pos < size {
            let n = (size - pos).min(PART) as usize;
            file.read_exact(&mut buf[..n]).map_err(read_err)?;
            let part_crc = crc32c::crc32c(&buf[..n]);
            let number = (pos / PART) as u32 + 1;
            loc.put_part(rel.as_bytes(), &upload, number, pos, &buf[..n], part_crc)?;
            crc = if pos == 0 { part_crc } else { ferry_common::crc::combine(crc, part_crc, n as u64) };
            numbers.push(number);
            pos += n as u64;
        }
        loc.complete_multipart(rel.as_bytes(), &upload, &numbers, size, &meta, crc).map(|_| ())
    })();
    if result.is_err() {
        let _ = loc.abort_multipart(rel.as_bytes(), &upload);
    }
    result
}
