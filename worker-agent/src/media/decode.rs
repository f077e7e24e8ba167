//! Decode any audio FFmpeg reads (wav, mp3, m4a/aac, ogg/opus, flac, the audio track of a
//! video) into 16 kHz mono f32, the input Whisper wants.
//!
//! Errors say what was wrong with the file: missing or unreadable ([`ProcessError::Input`]),
//! zero bytes ([`ProcessError::Empty`]), or not decodable audio, truncated or corrupt
//! ([`ProcessError::InvalidMedia`]). FFmpeg's own log lines go to `tracing` (target `ffmpeg`),
//! never to stderr.

use std::path::Path;
use std::sync::Once;

use ffmpeg::format::sample::Type as SampleType;
use ffmpeg::format::Sample;
use ffmpeg::{frame, ChannelLayout};
use ffmpeg_next as ffmpeg;

use super::{Cancel, MediaKind, ProcessError};

/// Whisper's input rate.
pub const SAMPLE_RATE: u32 = 16_000;
/// Longest audio decoded: 6 hours (1.4 GB of f32 samples).
pub const MAX_AUDIO_SECONDS: u64 = 6 * 3600;
/// Packets between two looks at the cancel token.
const CANCEL_POLL_PACKETS: usize = 64;

/// What the source file held, before resampling.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Seconds of audio decoded.
    pub duration: f64,
    /// Channels of the source stream.
    pub channels: u16,
    /// Sample rate of the source stream, Hz.
    pub sample_rate: u32,
    /// FFmpeg's codec id name (`pcm_s16le`, `mp3`, `aac`, `opus`, `flac`, ...).
    pub codec: String,
    /// FFmpeg's container name (`wav`, `mp3`, `mov,mp4,m4a,3gp,3g2,mj2`, ...).
    pub container: String,
}

/// 16 kHz mono f32 samples plus what the source was.
#[derive(Debug, Clone)]
pub struct DecodedAudio {
    pub samples: Vec<f32>,
    pub info: SourceInfo,
}

impl DecodedAudio {
    /// Seconds of decoded audio.
    pub fn duration(&self) -> f64 {
        self.samples.len() as f64 / SAMPLE_RATE as f64
    }
}

/// Initialise FFmpeg once and route its log lines into `tracing`.
pub fn init_ffmpeg() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if let Err(e) = ffmpeg::init() {
            tracing::warn!(error = %e, "ffmpeg init failed");
        }
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Warning);
        logs::install();
    });
}

#[cfg(target_arch = "x86_64")]
mod logs {
    use std::ffi::{c_char, c_int, c_void, CStr};

    use ffmpeg_next::ffi;

    /// Formats one FFmpeg log line and emits it as a tracing event.
    ///
    /// # Safety
    /// Called by FFmpeg with a valid format string and the va_list matching it.
    unsafe extern "C" fn callback(
        avcl: *mut c_void,
        level: c_int,
        fmt: *const c_char,
        vl: *mut ffi::__va_list_tag,
    ) {
        // SAFETY: reads FFmpeg's global log level; no preconditions.
        if level > unsafe { ffi::av_log_get_level() } {
            return;
        }
        let mut buf = [0 as c_char; 1024];
        let mut prefix: c_int = 1;
        // SAFETY: FFmpeg passes a matching fmt/vl pair; the buffer length is passed along and
        // av_log_format_line2 NUL-terminates within it.
        unsafe {
            ffi::av_log_format_line2(
                avcl,
                level,
                fmt,
                vl,
                buf.as_mut_ptr(),
                buf.len() as c_int,
                &mut prefix,
            );
        }
        // SAFETY: NUL-terminated by av_log_format_line2 (the buffer was zeroed as well).
        let line = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        if level <= ffi::AV_LOG_ERROR as c_int {
            tracing::debug!(target: "ffmpeg", level = "error", "{line}");
        } else if level <= ffi::AV_LOG_WARNING as c_int {
            tracing::debug!(target: "ffmpeg", level = "warning", "{line}");
        } else {
            tracing::trace!(target: "ffmpeg", "{line}");
        }
    }

    pub fn install() {
        // SAFETY: the callback has the signature FFmpeg expects and is a plain function.
        unsafe { ffi::av_log_set_callback(Some(callback)) }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod logs {
    /// va_list differs per architecture; elsewhere FFmpeg is kept quiet instead.
    pub fn install() {
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Quiet);
    }
}

fn invalid(path: &Path, kind: MediaKind, reason: impl Into<String>) -> ProcessError {
    ProcessError::InvalidMedia {
        path: path.to_path_buf(),
        kind,
        reason: reason.into(),
    }
}

/// The start every processor shares: FFmpeg ready, the job not cancelled already, the input a
/// readable, non-empty file. Returns its size.
pub fn start_job(path: &Path, cancel: &super::Cancel) -> Result<u64, ProcessError> {
    init_ffmpeg();
    if cancel.is_cancelled() {
        return Err(ProcessError::Cancelled);
    }
    check_input(path)
}

/// Check that `path` is a readable, non-empty file.
pub fn check_input(path: &Path) -> Result<u64, ProcessError> {
    let meta = std::fs::metadata(path).map_err(|source| ProcessError::Input {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ProcessError::Input {
            path: path.to_path_buf(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    if meta.len() == 0 {
        return Err(ProcessError::Empty(path.to_path_buf()));
    }
    std::fs::File::open(path).map_err(|source| ProcessError::Input {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(meta.len())
}

/// A resampler to 16 kHz mono f32, rebuilt when the decoded frames change shape.
struct Resampler {
    ctx: ffmpeg::software::resampling::Context,
    key: (Sample, u64, u32),
}

fn frame_layout(f: &frame::Audio) -> ChannelLayout {
    let layout = f.channel_layout();
    if layout.bits() == 0 || layout.channels() != i32::from(f.channels()) {
        ChannelLayout::default(i32::from(f.channels()))
    } else {
        layout
    }
}

fn out_frame(capacity: usize) -> frame::Audio {
    frame::Audio::new(
        Sample::F32(SampleType::Packed),
        capacity.max(256),
        ChannelLayout::MONO,
    )
}

fn push_mono(out: &mut Vec<f32>, f: &frame::Audio) {
    if f.samples() > 0 {
        out.extend_from_slice(&f.plane::<f32>(0)[..f.samples()]);
    }
}

impl Resampler {
    fn convert(
        slot: &mut Option<Resampler>,
        input: &mut frame::Audio,
        out: &mut Vec<f32>,
    ) -> Result<(), ffmpeg::Error> {
        let layout = frame_layout(input);
        let key = (input.format(), layout.bits(), input.rate());
        if slot.as_ref().is_none_or(|r| r.key != key) {
            if let Some(old) = slot.as_mut() {
                Self::drain(&mut old.ctx, out)?;
            }
            let ctx = ffmpeg::software::resampling::Context::get(
                input.format(),
                layout,
                input.rate(),
                Sample::F32(SampleType::Packed),
                ChannelLayout::MONO,
                SAMPLE_RATE,
            )?;
            *slot = Some(Resampler { ctx, key });
        }
        let r = slot.as_mut().expect("set above");
        // Decoders may leave the layout unset; swresample wants it to match its input config.
        input.set_channel_layout(layout);
        let rate = input.rate().max(1) as usize;
        let capacity = input.samples() * SAMPLE_RATE as usize / rate + 64;
        let mut o = out_frame(capacity);
        r.ctx.run(input, &mut o)?;
        push_mono(out, &o);
        Ok(())
    }

    fn drain(
        ctx: &mut ffmpeg::software::resampling::Context,
        out: &mut Vec<f32>,
    ) -> Result<(), ffmpeg::Error> {
        loop {
            let mut o = out_frame(4096);
            ctx.flush(&mut o)?;
            if o.samples() == 0 {
                return Ok(());
            }
            push_mono(out, &o);
        }
    }
}

/// Decode the best audio stream of `path` to 16 kHz mono f32. `kind` only labels errors
/// (a video's audio track is decoded the same way).
pub fn decode_audio(
    path: &Path,
    kind: MediaKind,
    cancel: &Cancel,
) -> Result<DecodedAudio, ProcessError> {
    check_input(path)?;
    init_ffmpeg();
    let mut ictx = ffmpeg::format::input(path)
        .map_err(|e| invalid(path, kind, format!("FFmpeg cannot open it ({e})")))?;
    let container = ictx.format().name().to_string();
    let stream = ictx
        .streams()
        .best(ffmpeg::media::Type::Audio)
        .ok_or_else(|| {
            invalid(
                path,
                kind,
                format!("no audio stream (container {container})"),
            )
        })?;
    let stream_index = stream.index();
    let declared = {
        // Container duration in AV_TIME_BASE units, when FFmpeg did not guess it from the bitrate.
        // SAFETY: the input context is open; reading a plain field.
        let method = unsafe { (*ictx.as_ptr()).duration_estimation_method };
        let d = ictx.duration();
        (d > 0 && method != ffmpeg::ffi::AVDurationEstimationMethod::AVFMT_DURATION_FROM_BITRATE)
            .then(|| d as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE))
    };
    let codec_ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| invalid(path, kind, format!("bad audio stream parameters ({e})")))?;
    let mut decoder = codec_ctx
        .decoder()
        .audio()
        .map_err(|e| invalid(path, kind, format!("no decoder for the audio stream ({e})")))?;
    let codec = decoder.id().name().to_string();
    let (channels, sample_rate) = (decoder.channels(), decoder.rate());

    let max_samples = (MAX_AUDIO_SECONDS * u64::from(SAMPLE_RATE)) as usize;
    let mut samples: Vec<f32> = Vec::new();
    let mut resampler: Option<Resampler> = None;
    let mut decoded = frame::Audio::empty();
    let (mut packets, mut bad_packets) = (0usize, 0usize);
    let mut last_error: Option<ffmpeg::Error> = None;
    let resample_err = |e: ffmpeg::Error| invalid(path, kind, format!("cannot resample ({e})"));

    let mut receive = |decoder: &mut ffmpeg::decoder::Audio,
                       samples: &mut Vec<f32>,
                       resampler: &mut Option<Resampler>|
     -> Result<(), ProcessError> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            Resampler::convert(resampler, &mut decoded, samples).map_err(resample_err)?;
            if samples.len() > max_samples {
                return Err(invalid(
                    path,
                    kind,
                    format!("longer than the {MAX_AUDIO_SECONDS} s limit"),
                ));
            }
        }
        Ok(())
    };

    let mut packet = ffmpeg::Packet::empty();
    loop {
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::InvalidData) => {
                bad_packets += 1;
                last_error = Some(ffmpeg::Error::InvalidData);
                if bad_packets > 1000 {
                    break;
                }
                continue;
            }
            Err(e) => {
                last_error = Some(e);
                break;
            }
        }
        if packet.stream() != stream_index {
            continue;
        }
        packets += 1;
        if packets.is_multiple_of(CANCEL_POLL_PACKETS) && cancel.is_cancelled() {
            return Err(ProcessError::Cancelled);
        }
        if let Err(e) = decoder.send_packet(&packet) {
            bad_packets += 1;
            last_error = Some(e);
            continue;
        }
        receive(&mut decoder, &mut samples, &mut resampler)?;
    }
    if decoder.send_eof().is_ok() {
        receive(&mut decoder, &mut samples, &mut resampler)?;
    }
    if let Some(r) = resampler.as_mut() {
        Resampler::drain(&mut r.ctx, &mut samples).map_err(resample_err)?;
    }

    let why = || {
        last_error
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default()
    };
    if samples.is_empty() {
        return Err(invalid(
            path,
            kind,
            format!("no audio could be decoded from the {codec} stream{}", why()),
        ));
    }
    if bad_packets > 0 && bad_packets * 2 > packets + bad_packets {
        return Err(invalid(
            path,
            kind,
            format!(
                "corrupt: {bad_packets} of {} packets failed to decode{}",
                packets + bad_packets,
                why()
            ),
        ));
    }
    let duration = samples.len() as f64 / f64::from(SAMPLE_RATE);
    if let Some(declared) = declared {
        if duration + 0.5 < declared * 0.9 {
            return Err(invalid(
                path,
                kind,
                format!(
                    "truncated: decoded {duration:.2} s of the {declared:.2} s the file declares"
                ),
            ));
        }
    }
    if bad_packets > 0 {
        tracing::warn!(path = %path.display(), bad_packets, packets, "some packets failed to decode");
    }
    Ok(DecodedAudio {
        samples,
        info: SourceInfo {
            duration,
            channels,
            sample_rate,
            codec,
            container,
        },
    })
}

/// Guess what a file holds by opening it with FFmpeg: a still image (image container or a
/// single-frame picture codec), a video (a moving video stream), or audio.
pub fn sniff_kind(path: &Path) -> Result<MediaKind, ProcessError> {
    check_input(path)?;
    init_ffmpeg();
    let ictx = ffmpeg::format::input(path).map_err(|e| ProcessError::Unsupported {
        path: path.to_path_buf(),
        reason: format!("not a media file FFmpeg recognises ({e}); pass --type"),
    })?;
    let container = ictx.format().name().to_string();
    let mut has_audio = false;
    let mut has_video = false;
    for s in ictx.streams() {
        let params = s.parameters();
        match params.medium() {
            ffmpeg::media::Type::Audio => has_audio = true,
            ffmpeg::media::Type::Video => {
                // Cover art in audio files is an attached picture, not video.
                let attached = s
                    .disposition()
                    .contains(ffmpeg::format::stream::Disposition::ATTACHED_PIC);
                if !attached {
                    has_video = true;
                }
            }
            _ => {}
        }
    }
    if container.ends_with("_pipe") || container == "image2" || (container == "gif" && !has_audio) {
        return Ok(MediaKind::Image);
    }
    if has_video {
        return Ok(MediaKind::Video);
    }
    if has_audio {
        return Ok(MediaKind::Audio);
    }
    Err(ProcessError::Unsupported {
        path: path.to_path_buf(),
        reason: format!("no audio or video stream (container {container})"),
    })
}
