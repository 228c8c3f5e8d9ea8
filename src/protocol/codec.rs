//! Zinx framing: `[len u32 LE][id u32 LE][body]`, where `len` counts the body only.
//!
//! The decoder enforces the inbound body limit right after the header, before a byte of the body
//! is buffered, so an oversized frame costs eight bytes of memory, not `len`. Outbound frames are
//! not size-checked (the original server sends history pages larger than its inbound limit).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes of the frame header.
pub const HEADER_LEN: usize = 8;

/// One frame: a message id and its (usually JSON) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: u32,
    pub body: Bytes,
}

impl Frame {
    pub fn new(id: u32, body: impl Into<Bytes>) -> Self {
        Frame {
            id,
            body: body.into(),
        }
    }

    /// The frame as one contiguous buffer, ready to be written (or shared between connections).
    pub fn to_bytes(&self) -> Bytes {
        encode(self.id, &self.body)
    }
}

/// Encode one frame into a fresh buffer.
pub fn encode(id: u32, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + body.len());
    put_frame(&mut buf, id, body);
    buf.freeze()
}

fn put_frame(buf: &mut BytesMut, id: u32, body: &[u8]) {
    let len = u32::try_from(body.len()).expect("frame body larger than 4 GiB");
    buf.reserve(HEADER_LEN + body.len());
    buf.put_u32_le(len);
    buf.put_u32_le(id);
    buf.put_slice(body);
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes (message id {id})")]
    Oversized { id: u32, len: usize, max: usize },
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The codec, with the inbound body limit (`protocol.max_body`).
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_body: usize,
}

impl FrameCodec {
    pub fn new(max_body: usize) -> Self {
        FrameCodec { max_body }
    }

    /// A codec for the receiving side of a client: servers may send bodies above the inbound
    /// limit, so a client accepts anything up to 64 MiB.
    pub fn client() -> Self {
        FrameCodec { max_body: 64 << 20 }
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Peek at the header: `Some((id, len))` once eight bytes are buffered.
    pub fn peek_header(src: &[u8]) -> Option<(u32, usize)> {
        if src.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_le_bytes(src[0..4].try_into().unwrap()) as usize;
        let id = u32::from_le_bytes(src[4..8].try_into().unwrap());
        Some((id, len))
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some((id, len)) = Self::peek_header(src) else {
            return Ok(None);
        };
        if len > self.max_body {
            return Err(FrameError::Oversized {
                id,
                len,
                max: self.max_body,
            });
        }
        if src.len() < HEADER_LEN + len {
            // Reserve exactly what this frame still needs, never more.
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len).freeze();
        Ok(Some(Frame { id, body }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        put_frame(dst, frame.id, &frame.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ping_matches_the_original_bytes() {
        let bytes = encode(1, b"ping");
        assert_eq!(&bytes[..], b"\x04\x00\x00\x00\x01\x00\x00\x00ping");
    }

    #[test]
    fn body_at_the_limit_is_accepted_and_one_more_is_refused() {
        let mut codec = FrameCodec::new(8192);
        let mut buf = BytesMut::from(&encode(104, &[b'x'; 8192])[..]);
        let frame = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.body.len(), 8192);

        let mut buf = BytesMut::new();
        buf.put_u32_le(8193);
        buf.put_u32_le(104);
        match codec.decode(&mut buf) {
            Err(FrameError::Oversized { id, len, max }) => {
                assert_eq!((id, len, max), (104, 8193, 8192))
            }
            other => panic!("expected oversized, got {other:?}"),
        }
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut codec = FrameCodec::new(8192);
        let full = encode(208, b"{\"a\":1}");
        let mut buf = BytesMut::from(&full[..full.len() - 1]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated { .. })
        ));
        let mut empty = BytesMut::new();
        assert!(codec.decode_eof(&mut empty).unwrap().is_none());
    }

    #[test]
    fn empty_body_is_legal() {
        let mut codec = FrameCodec::new(8192);
        let mut buf = BytesMut::from(&encode(106, b"")[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::new(106, "")));
        assert!(buf.is_empty());
    }

    proptest! {
        /// Any sequence of frames, cut into arbitrary chunks, decodes back to the same frames.
        #[test]
        fn roundtrip_under_arbitrary_chunking(
            frames in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
            cuts in proptest::collection::vec(1usize..64, 1..50),
        ) {
            let mut wire = BytesMut::new();
            let mut codec = FrameCodec::new(300);
            for (id, body) in &frames {
                codec.encode(Frame::new(*id, body.clone()), &mut wire).unwrap();
            }
            let wire = wire.freeze();
            let mut decoded = Vec::new();
            let mut buf = BytesMut::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < wire.len() {
                let step = cuts[i % cuts.len()].min(wire.len() - pos);
                buf.extend_from_slice(&wire[pos..pos + step]);
                pos += step;
                i += 1;
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    decoded.push(f);
                }
            }
            prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
            let expected: Vec<Frame> = frames.into_iter().map(|(id, b)| Frame::new(id, b)).collect();
            prop_assert_eq!(decoded, expected);
        }

        /// Any header whose length exceeds the limit is refused before its body is buffered.
        #[test]
        fn oversized_headers_are_refused(len in 301u32.., id in any::<u32>()) {
            let mut codec = FrameCodec::new(300);
            let mut buf = BytesMut::new();
            buf.put_u32_le(len);
            buf.put_u32_le(id);
            let is_oversized = matches!(codec.decode(&mut buf), Err(FrameError::Oversized { .. }));
            prop_assert!(is_oversized);
            prop_assert!(buf.capacity() < 1024);
        }

        /// Arbitrary garbage never panics the decoder.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut codec = FrameCodec::new(512);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
