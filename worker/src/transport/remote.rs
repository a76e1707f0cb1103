//! The destination as a reader at another site sees it: each question is one REQUEST on a
//! stream to a writer agent, answered by one RESPONSE (docs/protocol.md, "Requests").
//! Batches are bounded ([`MAX_BATCH`]), so a page of work costs one round trip.

use std::time::{Duration, Instant};

use ferry_common::error::{ErrorKind, FerryError};
use serde_bytes::ByteBuf;

use super::frame::{Code, Frame, Hello, Request, Response, MAX_BATCH};
use super::wire::LinkError;
use super::Connector;
use crate::engine::dest::Dest;
use crate::engine::owners::OwnerIdsFound;
use crate::engine::read::ANSWER_TIMEOUT;
use crate::location::{Meta, Page};

/// How long a question is retried while the link is down, before the shard gives up (and
/// is retried as a new attempt).
const RETRY_FOR: Duration = Duration::from_secs(120);

pub struct RemoteDest<'a> {
    pub connector: &'a dyn Connector,
    pub exec: String,
    pub agent: String,
    /// The destination URI, for messages.
    pub uri: String,
}

fn down(why: impl std::fmt::Display) -> FerryError {
    FerryError::new(ErrorKind::Unavailable, format!("link to the destination agents: {why}"))
}

impl RemoteDest<'_> {
    fn ask_once(&self, attempt: u32, req: &Request) -> Result<Response, LinkError> {
        // The writer's span of this stream is a child of this one (its HELLO carries it).
        let span = tracing::debug_span!("ask_destination", otel.name = "ask destination", attempt);
        let _in = span.enter();
        let mut wire = self.connector.open(attempt)?;
        wire.send(Frame::Hello(Hello { exec: self.exec.clone(), agent: self.agent.clone(), trace: ferry_common::traces::current_traceparent() }))?;
        wire.send(Frame::Request(req.clone()))?;
        match wire.recv(Some(ANSWER_TIMEOUT))? {
            Some(Frame::Response(r)) => Ok(r),
            Some(Frame::Error { code, message }) => Err(super::wire::refused(code, message)),
            Some(other) => Err(super::wire::refused(Code::OutOfOrder as u16, format!("unexpected answer to a request: {other:?}"))),
            None => Err(LinkError::Down(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()))),
        }
    }

    /// Asks, reconnecting while the link is down or the writer is still joining.
    fn ask(&self, req: Request) -> Result<Response, FerryError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            let result = self.ask_once(attempt, &req);
            attempt += 1;
            let retry = match result {
                Ok(Response::Failed(e)) => return Err(e),
                Ok(r) => return Ok(r),
                Err(LinkError::Down(why)) => why,
                Err(LinkError::Refused(e)) if e.code.is_transient() => e.to_string(),
                Err(LinkError::Refused(e)) => return Err(FerryError::new(ErrorKind::Other, format!("destination agent refused a request: {e}"))),
            };
            if started.elapsed() >= RETRY_FOR {
                return Err(down(format!("down for {} s: {retry}", RETRY_FOR.as_secs())));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Asks about `items` in batches of [`MAX_BATCH`], joining the answers.
    fn batched<T, R>(&self, items: &[T], make: impl Fn(&[T]) -> Request, take: impl Fn(Response) -> Option<Vec<R>>) -> Result<Vec<R>, FerryError> {
        let mut out = Vec::with_capacity(items.len());
        for part in items.chunks(MAX_BATCH) {
            let answer = self.ask(make(part))?;
            let got = take(answer)
                .filter(|v| v.len() == part.len())
                .ok_or_else(|| FerryError::new(ErrorKind::Other, "the destination agent answered a request with the wrong shape"))?;
            out.extend(got);
        }
        Ok(out)
    }
}

fn bufs(rels: &[Vec<u8>]) -> Vec<ByteBuf> {
    rels.iter().map(|r| ByteBuf::from(r.clone())).collect()
}

/// One result per item, or the same error for each when the whole batch failed.
fn each<R>(n: usize, r: Result<Vec<Result<R, FerryError>>, FerryError>) -> Vec<Result<R, FerryError>> {
    match r {
        Ok(v) => v,
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}

impl Dest for RemoteDest<'_> {
    fn describe(&self, rel: &[u8]) -> String {
        format!("{}/{}", self.uri.trim_end_matches('/'), ferry_common::paths::display(rel))
    }

    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError> {
        let max = max.clamp(1, MAX_BATCH) as u32;
        match self.ask(Request::List { dir: dir.to_vec(), resume: resume.map(<[u8]>::to_vec), max })? {
            Response::Page { entries, resume } => Ok(Page {
                entries: entries
                    .into_iter()
                    .map(|(name, meta, complete)| crate::location::Listed { name: name.into_vec(), meta, complete, cursor: Vec::new() })
                    .collect(),
                resume,
            }),
            _ => Err(FerryError::new(ErrorKind::Other, "the destination agent answered a listing with something else")),
        }
    }

    fn lookup(&self, dir: &[u8], names: &[Vec<u8>]) -> Result<Vec<Option<(Meta, bool)>>, FerryError> {
        self.batched(
            names,
            |n| Request::Lookup { dir: dir.to_vec(), names: bufs(n) },
            |r| match r {
                Response::Found(v) => Some(v),
                _ => None,
            },
        )
    }

    fn stat_many(&self, rels: &[Vec<u8>]) -> Vec<Result<Option<Meta>, FerryError>> {
        each(
            rels.len(),
            self.batched(
                rels,
                |r| Request::Stat { rels: bufs(r) },
                |r| match r {
                    Response::Metas(v) => Some(v),
                    _ => None,
                },
            ),
        )
    }

    fn checksums(&self, rels: &[Vec<u8>]) -> Vec<Result<u32, FerryError>> {
        each(
            rels.len(),
            self.batched(
                rels,
                |r| Request::Checksums { rels: bufs(r) },
                |r| match r {
                    Response::Checksums(v) => Some(v),
                    _ => None,
                },
            ),
        )
    }

    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        each(
            rels.len(),
            self.batched(
                rels,
                |r| Request::Remove { rels: bufs(r) },
                |r| match r {
                    Response::Removed(v) => Some(v),
                    _ => None,
                },
            ),
        )
    }

    fn ensure_dirs(&self, rels: &[Vec<u8>]) -> Vec<Result<(), FerryError>> {
        each(
            rels.len(),
            self.batched(
                rels,
                |r| Request::EnsureDirs { rels: bufs(r) },
                |r| match r {
                    Response::Made(v) => Some(v),
                    _ => None,
                },
            ),
        )
    }

    fn open_upload(&self, rel: &[u8], size: u64, meta: &Meta) -> Result<(String, bool), FerryError> {
        match self.ask(Request::OpenUpload { rel: rel.to_vec(), size, meta: meta.clone() })? {
            Response::Upload { id, created } => Ok((id, created)),
            _ => Err(FerryError::new(ErrorKind::Other, "the destination agent answered an upload request with something else")),
        }
    }

    fn abort_upload(&self, rel: &[u8], upload: &str) -> Result<(), FerryError> {
        self.ask(Request::AbortUpload { rel: rel.to_vec(), upload: upload.to_string() }).map(|_| ())
    }

    fn owner_ids(&self, users: &[String], groups: &[String]) -> Result<OwnerIdsFound, FerryError> {
        let ids = |r| match r {
            Response::Ids(v) => Some(v),
            _ => None,
        };
        let uids = self.batched(users, |n| Request::UserIds { names: n.to_vec() }, ids)?;
        let gids = self.batched(groups, |n| Request::GroupIds { names: n.to_vec() }, ids)?;
        Ok((uids, gids))
    }
}
