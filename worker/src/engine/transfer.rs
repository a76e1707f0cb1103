//! Transfer shards: the reader ([`super::read`]) sends the entries through a
//! [`Connector`], in-process or over a link, reconnecting while a link is down, and the
//! writer's answers become the shard's outcome.

use std::time::{Duration, Instant};

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{Entry, EntryKind, EntryStatus};

use super::read::{send_batch, Batch, SendSettings, Settled};
use super::{dry_run, ExecContext, Line, Outcome, Retries};
use crate::transport::wire::LinkError;
use crate::transport::Connector;

/// How long a reader keeps reconnecting, from the first failure without progress, before it
/// gives the shard back as failed (to be retried as a new attempt). A link cut shorter than
/// this resumes transparently.
pub const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// The worker lost its lease while sending.
#[derive(Debug)]
pub struct Abandoned;

/// How long the link has been down for one batch. The window starts at the first failure,
/// not when the batch started (a long transfer before a cut must not eat into it), and starts
/// again once a reconnect settles more entries.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<(Instant, usize)>,
}

impl Outage {
    /// Records a failure at `now` with `settled` entries answered so far; returns how long
    /// the link has been down.
    pub fn down(&mut self, now: Instant, settled: usize) -> Duration {
        match self.since {
            Some((start, before)) if settled == before => now.saturating_duration_since(start),
            _ => {
                self.since = Some((now, settled));
                Duration::ZERO
            }
        }
    }
}

/// Sends one batch over streams from `connector`, reconnecting while the link is down.
/// Returns the last error for entries left unsettled.
pub fn send_with_retries(
    ctx: &ExecContext,
    connector: &dyn Connector,
    settings: &SendSettings,
    batch: &mut Batch,
    buf: &mut Vec<u8>,
) -> Result<Option<FerryError>, Abandoned> {
    let mut outage = Outage::default();
    let mut backoff = Duration::from_millis(200);
    let mut tries = 0u32;
    while !batch.is_settled() {
        if ctx.fence().is_err() {
            return Err(Abandoned);
        }
        let result = connector.open(tries).and_then(|mut wire| send_batch(ctx, settings, wire.as_mut(), batch, buf));
        tries += 1;
        // A writer that does not know the execution yet is joining it (it just started, or
        // came back after a crash), and one that lost its lease is rejoining: wait for it
        // like for a link that is down.
        let result = match result {
            Err(LinkError::Refused(e)) if e.code.is_transient() => Err(LinkError::Down(e.to_string())),
            other => other,
        };
        match result {
            Ok(()) => {}
            Err(LinkError::Down(why)) => {
                let settled = batch.settled.iter().filter(|s| s.is_some()).count();
                if outage.down(Instant::now(), settled) >= RECONNECT_FOR {
                    return Ok(Some(FerryError::new(
                        ErrorKind::Unavailable,
                        format!("link to the destination agents down for {} s: {why}", RECONNECT_FOR.as_secs()),
                    )));
                }
                tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "link down; reconnecting to resume");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(LinkError::Refused(e)) => {
                if tries >= 3 {
                    return Ok(Some(FerryError::new(ErrorKind::Unavailable, format!("destination agent ended the stream: {e}"))));
                }
            }
        }
    }
    Ok(None)
}

/// The stable code in a refusal's message (`[PATH_TOO_LONG] ...`), or the kind's.
pub fn refusal_code(e: &FerryError) -> String {
    e.message
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(code, _)| code.to_string())
        .filter(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'))
        .unwrap_or_else(|| e.kind.code().to_string())
}

/// Runs a transfer shard.
pub fn run_transfer(
    ctx: &ExecContext,
    connector: &dyn Connector,
    settings: &SendSettings,
    entries: Vec<Entry>,
    tries: crate::retry::Tries,
    buf: &mut Vec<u8>,
) -> Outcome {
    if ctx.options().dry_run {
        return dry_run(entries, "copy");
    }
    let mut out = Outcome::default();
    let mut batch = Batch::new(entries);
    let last_error = match send_with_retries(ctx, connector, settings, &mut batch, buf) {
        Ok(e) => e,
        Err(Abandoned) => {
            out.abandoned = true;
            return out;
        }
    };
    out.counters().add(&batch.counters);
    let verify = ctx.commit_options().verify;
    let mut retries = Retries::new(ctx, tries);
    for (entry, settled) in batch.entries.into_iter().zip(batch.settled) {
        match settled {
            Some(Settled::Transferred { crc, note, .. }) => {
                if entry.kind == EntryKind::File {
                    let c = out.counters();
                    c.bytes_written += entry.size;
                    if verify {
                        c.files_verified += 1;
                        c.bytes_verified += entry.size;
                    }
                    out.record(Line::of(&entry, EntryStatus::Transferred).crc(Some(crc)).note(note));
                } else {
                    out.record(Line::of(&entry, EntryStatus::Transferred));
                }
            }
            Some(Settled::Current) => out.record(Line::of(&entry, EntryStatus::Skipped).reason("unchanged (checked by the writer)")),
            Some(Settled::Failed(e)) if e.kind == ErrorKind::Unsupported => {
                let code = refusal_code(&e);
                out.record(Line::of(&entry, EntryStatus::Skipped).reason(format!("destination cannot hold it: {}", e.message)).code(&code));
            }
            Some(Settled::Failed(e)) => retries.fail(&mut out, entry, e),
            None => {
                let e = last_error.clone().unwrap_or_else(|| FerryError::new(ErrorKind::Unavailable, "the link gave up"));
                retries.fail(&mut out, entry, e);
            }
        }
    }
    retries.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_window_starts_at_the_first_failure_and_again_after_progress() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut outage = Outage::default();
        // The batch sent for 300 s before the first cut: none of that counts.
        assert_eq!(outage.down(at(300), 10), Duration::ZERO);
        assert_eq!(outage.down(at(350), 10), Duration::from_secs(50));
        // A reconnect settled more entries, then the link fell again: a new window.
        assert_eq!(outage.down(at(400), 12), Duration::ZERO);
        assert_eq!(outage.down(at(520), 12), Duration::from_secs(120));
        assert!(outage.down(at(521), 12) >= RECONNECT_FOR);
    }
}
