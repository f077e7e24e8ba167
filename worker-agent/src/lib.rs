//! morag-agent: the daemon on edge GPU machines.
//!
//! # Layout, in floors: a module imports only from its own floor's plain types and the floors
//! below it.
//!
//! 1. Plain types: `cancel.rs` (cancellation), `transcript.rs` (segments), `frames/` (frame
//!    types and their CPU reference operations), `hardware.rs` (the fingerprint and the GPU
//!    list NVML gives).
//! 2. Models: `models/` (model files: names, Whisper import CTranslate2 -> ggml, download,
//!    checksum-checked imports).
//! 3. Devices: `gpu/` (the frame engine on CUDA or the CPU, which GPUs are used, where each job
//!    runs, the self-test).
//! 4. Processors: `speech/` (voice activity, speaker diarization and topic segmentation with
//!    ONNX Runtime and the GE2E speaker encoder), then `media/` (audio, video and image
//!    processors, MoRAG's result shapes), which uses `speech`.
//! 5. The daemon and the command line: `serve/` (`morag-agent serve`: hub session, job
//!    runner, outbox, health), `enroll.rs`, `diagnose.rs` (`morag-agent gpu`), `cli.rs`.
pub mod cancel;
pub mod cli;
pub mod diagnose;
pub mod enroll;
pub mod frames;
pub mod gpu;
pub mod hardware;
pub mod media;
pub mod models;
pub mod serve;
pub mod speech;
pub mod transcript;
