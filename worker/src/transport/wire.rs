//! A stream as the reader sees it: send a frame, receive the next one. Two implementations:
//! QUIC (`super::link::quic::QuicWire`), to a writer at another site, and in-process
//! ([`LocalWire`]), where the reader reaches the destination itself: the same frames, the same
//! writer, no network.

use std::collections::VecDeque;
use std::time::Duration;

use super::frame::{Code, Frame, ProtocolError};
use crate::engine::write::Writer;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The connection or stream is gone, or the writer went silent: reconnect (maybe to
    /// another writer) and resume.
    #[error("link down: {0}")]
    Down(String),
    /// The writer ended the stream with an error code.
    #[error("writer ended the stream: {0}")]
    Refused(ProtocolError),
}

/// One bidirectional stream of frames. `send` blocks while flow control holds it back;
/// `recv(None)` only polls, `recv(Some(t))` waits up to `t`. `Ok(None)` means nothing came.
pub trait Wire {
    fn send(&mut self, frame: Frame) -> Result<(), LinkError>;
    fn recv(&mut self, wait: Option<Duration>) -> Result<Option<Frame>, LinkError>;
    /// A buffer of `len` bytes for the next chunk's data. A chunk sent over a network is
    /// handed to the transport and gone; an in-process wire gives buffers back for reuse.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        vec![0u8; len]
    }
}

/// The writer called directly: same frames, no network, chunk buffers reused.
pub struct LocalWire<'a> {
    writer: Writer<'a>,
    inbox: VecDeque<Frame>,
    spare: Vec<Vec<u8>>,
}

/// Chunk buffers an in-process wire keeps for reuse.
const SPARE_BUFFERS: usize = 4;

impl<'a> LocalWire<'a> {
    pub fn new(writer: Writer<'a>) -> Self {
        LocalWire { writer, inbox: VecDeque::new(), spare: Vec::new() }
    }

    fn answer(&mut self, replies: Result<Vec<Frame>, ProtocolError>) {
        match replies {
            Ok(replies) => self.inbox.extend(replies),
            Err(e) => self.inbox.push_back(Frame::Error { code: e.code as u16, message: e.detail }),
        }
    }
}

impl Wire for LocalWire<'_> {
    fn send(&mut self, frame: Frame) -> Result<(), LinkError> {
        match frame {
            Frame::Hello(_) => {}
            Frame::Chunk { id, offset, crc32c, compressed, raw_len, data } => {
                let replies = self.writer.chunk(id, offset, crc32c, compressed, raw_len, &data);
                self.answer(replies);
                if self.spare.len() < SPARE_BUFFERS {
                    self.spare.push(data);
                }
            }
            other => {
                let replies = self.writer.handle(other);
                self.answer(replies);
            }
        }
        Ok(())
    }

    fn recv(&mut self, _wait: Option<Duration>) -> Result<Option<Frame>, LinkError> {
        Ok(self.inbox.pop_front())
    }

    fn buffer(&mut self, len: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut b) => {
                // The contents are overwritten by the read that fills it.
                b.resize(len, 0);
                b
            }
            None => vec![0u8; len],
        }
    }
}

/// The error a reader reports for an ERROR frame.
pub fn refused(code: u16, message: String) -> LinkError {
    LinkError::Refused(ProtocolError { code: Code::from_u16(code).unwrap_or(Code::Malformed), detail: message })
}
