//! morag-agent: the daemon on edge GPU machines.
//!
//! # Layout
//! - `media/`: the processors (audio, video, image) and their shared types.
//! - `gpu/`: the frame engine (CPU reference ops or CUDA kernels) and GPU selection.
//! - `hardware.rs`: the hardware fingerprint (CPU, memory, OS, NVIDIA GPUs).
//! - `models/`: Whisper model import (CTranslate2 -> ggml) and download.
//! - `serve/`: the daemon (`morag-agent serve`): hub session, job runner, outbox, health.
//! - `speech/`: speaker diarization and topic segmentation of transcripts (ONNX Runtime,
//!   the GE2E speaker encoder).
//! - `cli`: the `morag-agent` command line (`serve`, `process`, `model import-ct2`, `model fetch`).
pub mod cli;
pub mod diagnose;
pub mod enroll;
pub mod gpu;
pub mod hardware;
pub mod media;
pub mod models;
pub mod serve;
pub mod speech;
