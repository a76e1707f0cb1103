//! A link stream as the reader sees it: send a frame, receive the next one. Two
//! implementations: QUIC ([`super::quic::QuicWire`]) and in-process ([`LocalWire`]), used when
//! the reader can reach the destination itself (no network hop) and by tests.

use std::collections::VecDeque;
use std::time::Duration;

use super::frame::{Code, Frame, ProtocolError};
use super::receiver::Receiver;

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
}

/// The writer's state machine called directly: same frames, no network.
pub struct LocalWire {
    receiver: Receiver,
    inbox: VecDeque<Frame>,
}

impl LocalWire {
    pub fn new(receiver: Receiver) -> Self {
        LocalWire { receiver, inbox: VecDeque::new() }
    }
}

impl Wire for LocalWire {
    fn send(&mut self, frame: Frame) -> Result<(), LinkError> {
        if matches!(frame, Frame::Hello(_)) {
            return Ok(());
        }
        match self.receiver.handle(frame) {
            Ok(replies) => self.inbox.extend(replies),
            Err(e) => self.inbox.push_back(Frame::Error { code: e.code as u16, message: e.detail }),
        }
        Ok(())
    }

    fn recv(&mut self, _wait: Option<Duration>) -> Result<Option<Frame>, LinkError> {
        Ok(self.inbox.pop_front())
    }
}

/// The error a reader reports for an ERROR frame.
pub fn refused(code: u16, message: String) -> LinkError {
    LinkError::Refused(ProtocolError { code: Code::from_u16(code).unwrap_or(Code::Malformed), detail: message })
}
