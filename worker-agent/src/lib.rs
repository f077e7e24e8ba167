//! morag-agent: the daemon on edge GPU machines.
//!
//! # Layout
//! - `media/`: the processors (audio, video, image) and their shared types.
pub mod media;
