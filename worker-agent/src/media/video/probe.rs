//! Open a video and read MoRAG's video metadata from it.

use std::path::Path;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::media;
use serde::{Deserialize, Serialize};

use crate::media::{MediaKind, ProcessError};

/// MoRAG's `VideoMetadata`, field for field (ffprobe's values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoMetadata {
    /// Seconds (the container's duration).
    pub duration: f64,
    pub width: u32,
    pub height: u32,
    /// The stream's `r_frame_rate`.
    pub fps: f64,
    /// FFmpeg codec name: `h264`, `mpeg4`, `vp9`, ...
    pub codec: String,
    /// The container's bit rate in bit/s, when known.
    pub bitrate: Option<i64>,
    pub file_size: u64,
    /// FFmpeg container name: `mov,mp4,m4a,3gp,3g2,mj2`, `matroska,webm`, ...
    pub format: String,
    pub has_audio: bool,
    pub audio_codec: Option<String>,
    /// The container's `creation_time` tag, when present.
    pub creation_time: Option<String>,
}

pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> ProcessError {
    ProcessError::InvalidMedia {
        path: path.to_path_buf(),
        kind: MediaKind::Video,
        reason: reason.into(),
    }
}

/// Open `path` with FFmpeg, mapping failures to a [`ProcessError`] that says what is wrong.
pub(crate) fn open(
    path: &Path,
    kind: MediaKind,
) -> Result<ffmpeg::format::context::Input, ProcessError> {
    ffmpeg::format::input(path).map_err(|e| ProcessError::InvalidMedia {
        path: path.to_path_buf(),
        kind,
        reason: format!("ffmpeg cannot read it ({e}): not media, or truncated or corrupt"),
    })
}

fn rational(r: ffmpeg::Rational) -> f64 {
    if r.denominator() == 0 {
        0.0
    } else {
        f64::from(r.numerator()) / f64::from(r.denominator())
    }
}

/// Read the metadata of an opened input. Fails when it holds no video stream.
pub(crate) fn metadata(
    path: &Path,
    ictx: &ffmpeg::format::context::Input,
    file_size: u64,
) -> Result<VideoMetadata, ProcessError> {
    let video = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| invalid(path, "no video stream"))?;
    let params = video.parameters();
    let dec = ffmpeg::codec::context::Context::from_parameters(params.clone())
        .and_then(|c| c.decoder().video())
        .map_err(|e| invalid(path, format!("video stream unreadable: {e}")))?;
    let audio = ictx.streams().best(media::Type::Audio);
    let mut duration = if ictx.duration() > 0 {
        ictx.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE)
    } else {
        0.0
    };
    if duration <= 0.0 && video.duration() > 0 {
        duration = video.duration() as f64 * rational(video.time_base());
    }
    let bitrate = (ictx.bit_rate() > 0).then_some(ictx.bit_rate());
    Ok(VideoMetadata {
        duration,
        width: dec.width(),
        height: dec.height(),
        fps: rational(video.rate()),
        codec: params.id().name().to_string(),
        bitrate,
        file_size,
        format: ictx.format().name().to_string(),
        has_audio: audio.is_some(),
        audio_codec: audio.map(|a| a.parameters().id().name().to_string()),
        creation_time: ictx.metadata().get("creation_time").map(str::to_string),
    })
}

/// Consecutive demuxer errors after which the input is treated as ended.
const MAX_READ_ERRORS: usize = 32;

/// Read the next packet, skipping isolated demuxer errors (as ffmpeg does) but ending on
/// end of file or on a run of errors (a truncated or unreadable file), never looping forever.
pub(crate) fn read_packet(ictx: &mut ffmpeg::format::context::Input) -> Option<ffmpeg::Packet> {
    let mut errors = 0;
    loop {
        let mut packet = ffmpeg::Packet::empty();
        match packet.read(ictx) {
            Ok(()) => return Some(packet),
            Err(ffmpeg::Error::Eof) => return None,
            Err(e) => {
                errors += 1;
                tracing::debug!(error = %e, errors, "demuxer error");
                if errors >= MAX_READ_ERRORS {
                    return None;
                }
            }
        }
    }
}
