//! Task reports: merged from the workers' report lines when a task execution ends, filtered
//! by the task's report configuration, and written to `{Destination}/{task}/{exec}.jsonl`.
//!
//! Workers write their lines to `{Destination}/.ferry-work/` while the execution runs (the
//! cluster report mechanism: [`crate::cluster::merge_report`] keeps exactly the lines of
//! committed shard attempts). In a cluster the destination directory must therefore be shared
//! by the workers and the coordinators, like `ferry copy --report` in cluster mode.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use ferry_common::model::Execution;
use ferry_common::task::{ReportLevel, ReportOutputType, TaskReportConfig};

/// Where workers write an execution's report lines before the merge.
pub fn work_dir(destination: &str) -> PathBuf {
    Path::new(destination.strip_prefix("file://").unwrap_or(destination)).join(".ferry-work")
}

/// The final report's path.
pub fn report_path(exec: &Execution, cfg: &TaskReportConfig) -> PathBuf {
    let dest = cfg.destination.strip_prefix("file://").unwrap_or(&cfg.destination);
    Path::new(dest).join(exec.spec.task.as_deref().unwrap_or("adhoc")).join(format!("{}.jsonl", exec.spec.id))
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
    let out = report_path(exec, cfg);
    let dir = out.parent().expect("a report path has a parent").to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let work = work_dir(&cfg.destination);
    std::fs::create_dir_all(&work)?;
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
    for ent in std::fs::read_dir(&work)?.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{}.", exec.spec.id)) {
            let _ = std::fs::remove_file(ent.path());
        }
    }
    Ok(out)
}
