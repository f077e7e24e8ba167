//! Decoding real media made with espeak-ng and ffmpeg: every format, a video's audio track,
//! and clear errors for empty, missing, non-media, truncated and corrupt files.

mod audio_common;

use std::path::Path;

use morag_agent::media::decode::{decode_audio, sniff_kind, DecodedAudio, SAMPLE_RATE};
use morag_agent::media::{Cancel, MediaKind, ProcessError};

fn decode(path: &Path) -> Result<DecodedAudio, ProcessError> {
    decode_audio(path, MediaKind::Audio, &Cancel::new())
}

fn rms(s: &[f32]) -> f64 {
    (s.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / s.len().max(1) as f64).sqrt()
}

#[test]
fn every_format_decodes_to_16k_mono() {
    let dir = fixture_or_skip!("every_format_decodes_to_16k_mono", audio_common::media());
    let reference = decode(&dir.join("speech.wav")).unwrap();
    let ref_secs = reference.duration();
    assert!(ref_secs > 3.0, "espeak sentence is {ref_secs} s");
    assert_eq!(reference.info.sample_rate, 16000);
    assert_eq!(reference.info.channels, 1);
    assert_eq!(reference.info.codec, "pcm_s16le");

    let cases = [
        ("speech_stereo44.wav", "pcm_s16le", 2, 44100),
        ("speech.mp3", "mp3", 1, 16000),
        ("speech.m4a", "aac", 1, 16000),
        ("speech.ogg", "opus", 1, 48000),
        ("speech.flac", "flac", 1, 16000),
        ("speech_video.mp4", "aac", 1, 16000),
    ];
    for (name, codec, channels, rate) in cases {
        let a = decode(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.info.codec, codec, "{name}");
        assert_eq!(a.info.channels, channels, "{name}");
        assert_eq!(a.info.sample_rate, rate, "{name}");
        // Lossy codecs add encoder delay/padding (tens of ms), never seconds.
        let d = a.duration();
        assert!((d - ref_secs).abs() < 0.2, "{name}: {d} s vs {ref_secs} s");
        assert!((a.info.duration - d).abs() < 1e-9, "{name}");
        assert!(rms(&a.samples) > 0.01, "{name} decoded to near silence");
        assert!(
            a.samples.iter().all(|x| x.is_finite() && x.abs() <= 1.5),
            "{name}"
        );
    }
}

#[test]
fn lossless_formats_decode_sample_exact() {
    let dir = fixture_or_skip!(
        "lossless_formats_decode_sample_exact",
        audio_common::media()
    );
    let wav = decode(&dir.join("speech.wav")).unwrap();
    let flac = decode(&dir.join("speech.flac")).unwrap();
    assert_eq!(wav.samples.len(), flac.samples.len());
    assert_eq!(wav.samples, flac.samples);
    // s16 -> f32 at the same rate is exact scaling.
    assert!(wav.samples.iter().all(|x| (x * 32768.0).fract() == 0.0));
    assert_eq!(
        wav.duration(),
        wav.samples.len() as f64 / f64::from(SAMPLE_RATE)
    );
}

#[test]
fn resampling_keeps_the_signal() {
    let dir = fixture_or_skip!("resampling_keeps_the_signal", audio_common::media());
    let a = decode(&dir.join("speech.wav")).unwrap();
    let b = decode(&dir.join("speech_stereo44.wav")).unwrap();
    // Same speech, resampled 22.05k -> 44.1k stereo -> 16k mono: strongly correlated.
    let n = a.samples.len().min(b.samples.len());
    let (x, y) = (&a.samples[..n], &b.samples[..n]);
    let dot: f64 = x
        .iter()
        .zip(y)
        .map(|(p, q)| f64::from(*p) * f64::from(*q))
        .sum();
    let corr = dot / (rms(x) * rms(y) * n as f64);
    assert!(corr > 0.9, "correlation {corr}");
}

fn invalid_reason(path: &Path) -> String {
    match decode(path) {
        Err(ProcessError::InvalidMedia { reason, kind, .. }) => {
            assert_eq!(kind, MediaKind::Audio);
            reason
        }
        other => panic!("{}: expected InvalidMedia, got {other:?}", path.display()),
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = fixture_or_skip!("bad_inputs_give_clear_errors", audio_common::media());
    assert!(matches!(
        decode(&dir.join("empty.wav")),
        Err(ProcessError::Empty(_))
    ));
    assert!(matches!(
        decode(&dir.join("does-not-exist.wav")),
        Err(ProcessError::Input { .. })
    ));
    assert!(matches!(decode(&dir), Err(ProcessError::Input { .. })));

    let r = invalid_reason(&dir.join("notmedia.wav"));
    assert!(r.contains("cannot open"), "{r}");
    let r = invalid_reason(&dir.join("corrupt.mp3"));
    assert!(!r.is_empty());
    let r = invalid_reason(&dir.join("truncated.m4a"));
    assert!(!r.is_empty());
    let r = invalid_reason(&dir.join("truncated_header.wav"));
    assert!(!r.is_empty());
    let r = invalid_reason(&dir.join("truncated.flac"));
    assert!(r.contains("truncated"), "{r}");
    let r = invalid_reason(&dir.join("silent_video.mp4"));
    assert!(r.contains("no audio stream"), "{r}");

    // Messages name the file.
    let e = decode(&dir.join("notmedia.wav")).unwrap_err().to_string();
    assert!(e.contains("notmedia.wav") && e.contains("not valid"), "{e}");
}

#[test]
fn cancelled_before_start_or_during_decode_stops() {
    let dir = fixture_or_skip!("cancelled_decode", audio_common::media());
    let cancel = Cancel::new();
    cancel.cancel();
    // Short files may finish before the first poll; a cancelled decode never yields garbage.
    match decode_audio(&dir.join("speech_stereo44.wav"), MediaKind::Audio, &cancel) {
        Ok(a) => assert!(!a.samples.is_empty()),
        Err(e) => assert!(matches!(e, ProcessError::Cancelled), "{e}"),
    }
}

#[test]
fn sniffing_without_extensions() {
    let dir = fixture_or_skip!("sniffing_without_extensions", audio_common::media());
    let tmp = tempfile::tempdir().unwrap();
    for (src, kind) in [
        ("speech.mp3", MediaKind::Audio),
        ("speech.flac", MediaKind::Audio),
        ("speech_video.mp4", MediaKind::Video),
    ] {
        let dst = tmp.path().join(src.replace('.', "_"));
        std::fs::copy(dir.join(src), &dst).unwrap();
        assert_eq!(sniff_kind(&dst).unwrap(), kind, "{src}");
    }
    let text = tmp.path().join("plain");
    std::fs::write(&text, "just some words\n".repeat(20)).unwrap();
    assert!(matches!(
        sniff_kind(&text),
        Err(ProcessError::Unsupported { .. })
    ));
}
