//! Links shards: each path becomes a hard link to the first path of its set, which the
//! transfer stage copied. Only planned where both locations keep hard links.

use ferry_common::model::{EntryKind, EntryStatus, LinkEntry};

use super::{ExecContext, Line, Outcome};
use crate::location::{Durable, Staged, Token};

pub fn run_links(ctx: &ExecContext, links: Vec<LinkEntry>) -> Outcome {
    let mut out = Outcome::default();
    let mut made = Vec::new();
    for link in links {
        if ctx.fence().is_err() {
            out.abandoned = true;
            return out;
        }
        let line = |status| Line::new(link.path.clone(), EntryKind::HardLink, status).size(link.size);
        if ctx.options().dry_run {
            out.record(line(EntryStatus::Skipped).reason("dry run: would link"));
            continue;
        }
        match ctx.dst().and_then(|d| d.link(&link.target, &link.path)) {
            Ok(true) => {
                out.record(line(EntryStatus::Transferred));
                made.push(Staged {
                    rel: link.path.clone(),
                    kind: EntryKind::HardLink,
                    size: 0,
                    crc32c: None,
                    token: Token::Placed { etag: None },
                    part_tags: Vec::new(),
                    resumed: 0,
                });
            }
            Ok(false) => out.record(line(EntryStatus::Skipped).reason("unchanged (already linked)")),
            Err(err) => out.fail(line(EntryStatus::Failed), &err),
        }
    }
    if ctx.options().fsync && !made.is_empty() {
        if let Err(e) = ctx.dst().and_then(|d| d.sync(&made, Durable::Names)) {
            out.fail_shard(&e);
        }
    }
    out
}
