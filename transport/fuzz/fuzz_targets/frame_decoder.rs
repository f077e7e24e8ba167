//! Arbitrary bytes through everything that reads the network: the control stream's frame
//! decoder and every frame and datagram type (`morag_transport::wire::exercise_decoders`, which
//! a seeded test in `transport/tests/decoders.rs` also drives on stable). Nothing may panic or
//! allocate past the frame limit. Run with `cargo +nightly fuzz run frame_decoder` from
//! `transport/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    morag_transport::wire::exercise_decoders(data);
});
