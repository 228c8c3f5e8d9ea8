//! The chat-zinx wire protocol: framing, message ids and payload shapes.
//!
//! This layer is thin and typed: it knows bytes and JSON, never a backend.

pub mod codec;
pub mod ids;
pub mod messages;

pub use codec::{Frame, FrameCodec, FrameError};
