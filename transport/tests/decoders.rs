//! A seeded random driver for `wire::exercise_decoders`, the entry point the fuzz target runs
//! (`transport/fuzz`, nightly only): on stable, in every test run, for a bounded time. Inputs
//! are random bytes and valid control-stream frames that are then mutated (bit flips, cut
//! short, length prefixes changed), so the decoders see both garbage and near-misses.
//!
//! `MORAG_FUZZ_SEED` replays a run; `MORAG_FUZZ_CASES` sets how many inputs (default 50,000).

use std::time::{Duration, Instant};

use morag_transport::frame::{encode, FrameDecoder, MAX_FRAME_SIZE};
use morag_transport::wire::{exercise_decoders, ControlFrame};
use morag_transport::{Body, Envelope, TaskCancel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Stop early past this, whatever the case count: the suite's time is shared.
const TIME_LIMIT: Duration = Duration::from_secs(20);

fn frames(rng: &mut StdRng) -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let n = rng.random_range(1..5);
    for i in 0..n {
        let frame = match rng.random_range(0..3) {
            0 => ControlFrame::Goodbye {
                code: rng.random(),
                reason: "x".repeat(rng.random_range(0..40)),
            },
            1 => ControlFrame::Message(Envelope::new(Body::TaskCancel(TaskCancel {
                task_id: format!("t{i}"),
                reason: "user".into(),
            }))),
            _ => ControlFrame::Message(
                Envelope::user("k", &vec![7u8; rng.random_range(0..300)]).unwrap(),
            ),
        };
        bytes.extend(encode(&frame, MAX_FRAME_SIZE).unwrap());
    }
    (bytes, n)
}

#[test]
fn decoders_survive_random_and_mutated_input() {
    let seed: u64 = std::env::var("MORAG_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases: u64 = std::env::var("MORAG_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    eprintln!("MORAG_FUZZ_SEED={seed} (set it to replay this run)");
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut run = 0u64;
    let mut frames_seen = 0usize;
    while run < cases && start.elapsed() < TIME_LIMIT {
        run += 1;
        let data = match rng.random_range(0..3) {
            0 => {
                let len = rng.random_range(0..2048);
                (0..len).map(|_| rng.random()).collect::<Vec<u8>>()
            }
            _ => {
                let (mut bytes, _) = frames(&mut rng);
                match rng.random_range(0..3) {
                    0 => {
                        for _ in 0..rng.random_range(1..8) {
                            let i = rng.random_range(0..bytes.len());
                            bytes[i] ^= 1 << rng.random_range(0..8);
                        }
                    }
                    1 => bytes.truncate(rng.random_range(0..bytes.len())),
                    _ => {
                        // A length prefix (the first one) rewritten.
                        let len: u32 = rng.random();
                        bytes[..4].copy_from_slice(&len.to_le_bytes());
                    }
                }
                bytes
            }
        };
        frames_seen += exercise_decoders(&data);
    }
    eprintln!(
        "{run} inputs in {:.1?}, {frames_seen} frames decoded on the way",
        start.elapsed()
    );
    assert!(run >= 1000, "only {run} inputs in the time limit");
    assert!(frames_seen > 0, "no input ever reached the frame decoders");
}

/// The control stream's reader gets whole frames back from any split of valid input.
#[test]
fn valid_frames_come_back_whole_from_any_split() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        let (bytes, n) = frames(&mut rng);
        let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let take = rng.random_range(1..=rest.len());
            d.extend(&rest[..take]);
            rest = &rest[take..];
            while let Some(f) = d.next_value::<ControlFrame>().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out.len(), n);
        assert_eq!(d.buffered(), 0);
    }
}
