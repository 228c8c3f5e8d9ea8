//! The frame decoder on arbitrary input, fed in arbitrary chunks: it never panics, never
//! buffers a body above its limit, and what it decodes re-encodes to the bytes it consumed.
#![no_main]

use bytes::BytesMut;
use chat_zinx::protocol::codec::{encode, FrameCodec, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX_BODY: usize = 512;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so the fuzzer explores partial headers and bodies.
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = FrameCodec::new(MAX_BODY);
    let mut buf = BytesMut::new();
    let mut consumed = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() <= MAX_BODY);
                    consumed.extend_from_slice(&encode(frame.id, &frame.body));
                }
                Ok(None) => break,
                // Oversized: the connection would be closed here.
                Err(_) => return,
            }
        }
        assert!(buf.len() < HEADER_LEN + MAX_BODY, "buffered past the limit");
    }
    assert_eq!(&input[..consumed.len()], &consumed[..]);
});
