//! Feed arbitrary bytes, split at an arbitrary point, to the frame decoder and decode every
//! message type the protocol reads from the network. Nothing may panic or allocate past the
//! frame limit. Run with `cargo +nightly fuzz run frame_decoder` from `transport/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use morag_transport::frame::FrameDecoder;
use morag_transport::wire::{ControlFrame, Datagram, StreamOpen, TransferDone, TransferReply};

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(0) as usize % (data.len() + 1);
    let (a, b) = data.split_at(split);
    let mut d = FrameDecoder::new(64 * 1024);
    d.extend(a);
    d.extend(b);
    for _ in 0..16 {
        match d.next_body() {
            Ok(Some(body)) => {
                let _ = postcard::from_bytes::<ControlFrame>(&body);
                let _ = postcard::from_bytes::<StreamOpen>(&body);
                let _ = postcard::from_bytes::<TransferReply>(&body);
                let _ = postcard::from_bytes::<TransferDone>(&body);
            }
            _ => break,
        }
    }
    let _ = postcard::from_bytes::<Datagram>(data);
});
