//! Video processing against real media made with the ffmpeg CLI.

mod video_common;

use std::path::{Path, PathBuf};

use morag_agent::media::image::{process_image, ImageOptions};
use morag_agent::media::video::{process_video, VideoOptions};
use morag_agent::media::{Cancel, NoProgress, ProcessError, ProcessOutput};
use video_common as media;

fn run(
    path: &Path,
    opts: &VideoOptions,
) -> (Result<ProcessOutput, ProcessError>, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let r = process_video(path, opts, &NoProgress, &Cancel::new(), out.path());
    (r, out)
}

fn paths(v: &serde_json::Value) -> Vec<PathBuf> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Width and height of a JPEG, read back through our own image processor.
fn jpeg_size(p: &Path) -> (u64, u64) {
    let out = tempfile::tempdir().unwrap();
    let opts = ImageOptions {
        thumbnail: false,
        ..ImageOptions::default()
    };
    let r = process_image(p, &opts, &NoProgress, &Cancel::new(), out.path()).unwrap();
    let m = &r.result["metadata"];
    assert_eq!(m["format"], "JPEG");
    (m["width"].as_u64().unwrap(), m["height"].as_u64().unwrap())
}

#[test]
fn metadata_thumbnails_and_audio_match_morag_defaults() {
    let video = media::cut_video();
    let (r, _out) = run(&video, &VideoOptions::default());
    let r = r.unwrap();
    let res = &r.result;
    let m = &res["metadata"];
    assert!((m["duration"].as_f64().unwrap() - 6.0).abs() < 0.1, "{m}");
    assert_eq!(
        (m["width"].as_u64(), m["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert_eq!(m["fps"].as_f64(), Some(25.0));
    assert_eq!(m["codec"], "h264");
    assert_eq!(m["format"], "mov,mp4,m4a,3gp,3g2,mj2");
    assert_eq!(m["has_audio"], true);
    assert_eq!(m["audio_codec"], "aac");
    assert_eq!(
        m["file_size"].as_u64(),
        Some(std::fs::metadata(&video).unwrap().len())
    );
    assert!(m["bitrate"].as_i64().unwrap() > 100_000);
    assert!(m["creation_time"]
        .as_str()
        .unwrap()
        .starts_with("2024-05-06T07:08:09"));
    // MoRAG's result fields.
    for key in [
        "audio_path",
        "thumbnails",
        "keyframes",
        "processing_time",
        "success",
        "error_message",
    ] {
        assert!(res.get(key).is_some(), "missing {key}");
    }
    assert_eq!(res["success"], true);
    assert!(
        res["keyframes"].as_array().unwrap().is_empty(),
        "keyframes are off by default"
    );

    // 5 thumbnails, 320x240, at MoRAG's times (0, 1.5, 3, 4.5, 5) within a frame.
    let thumbs = paths(&res["thumbnails"]);
    assert_eq!(thumbs.len(), 5);
    for t in &thumbs {
        assert_eq!(jpeg_size(t), (320, 240), "{}", t.display());
    }
    let times = floats(&res["thumbnail_timestamps"]);
    eprintln!("thumbnails at {times:?}; result: {res:#}");
    for (got, want) in times.iter().zip([0.0, 1.5, 3.0, 4.5, 5.0]) {
        assert!((got - want).abs() <= 1.0 / media::FPS + 1e-6, "{times:?}");
    }

    // Audio: MP3 at 128 kbit/s (the AAC track is re-encoded).
    let audio = PathBuf::from(res["audio_path"].as_str().unwrap());
    let ictx = ffmpeg_next::format::input(&audio).unwrap();
    let stream = ictx
        .streams()
        .best(ffmpeg_next::media::Type::Audio)
        .unwrap();
    assert_eq!(stream.parameters().id(), ffmpeg_next::codec::Id::MP3);
    let kbps = ictx.bit_rate() as f64 / 1000.0;
    assert!((120.0..=136.0).contains(&kbps), "{kbps} kbit/s");
    let secs = ictx.duration() as f64 / 1e6;
    assert!((secs - 6.0).abs() < 0.2, "{secs} s");

    // Artifacts: 5 JPEGs + 1 MP3, each hashed.
    assert_eq!(r.artifacts.len(), 6);
    for a in &r.artifacts {
        assert_eq!(a.blake3.len(), 64);
        assert_eq!(a.size, std::fs::metadata(&a.path).unwrap().len());
    }
}

#[test]
fn keyframes_land_on_the_cuts() {
    let video = media::cut_video();
    let opts = VideoOptions {
        extract_keyframes: true,
        extract_audio: false,
        ..VideoOptions::default()
    };
    let (r, _out) = run(&video, &opts);
    let res = r.unwrap().result;
    let times = floats(&res["keyframe_timestamps"]);
    eprintln!("keyframes at {times:?} (cuts at {:?})", media::CUTS);
    assert_eq!(times.len(), media::CUTS.len(), "keyframes at {times:?}");
    for (got, want) in times.iter().zip(media::CUTS) {
        assert!((got - want).abs() <= 2.0 / media::FPS + 1e-6, "{times:?}");
    }
    let keyframes = paths(&res["keyframes"]);
    assert_eq!(keyframes.len(), 2);
    assert_eq!(jpeg_size(&keyframes[0]), (320, 240));
    // The sequential pass still yields the thumbnails.
    assert_eq!(paths(&res["thumbnails"]).len(), 5);
    assert!(res["audio_path"].is_null());
}

#[test]
fn max_keyframes_and_sizes_are_honoured() {
    let opts = VideoOptions {
        extract_keyframes: true,
        max_keyframes: 1,
        thumbnail_count: 3,
        thumbnail_size: (160, 90),
        extract_audio: false,
        ..VideoOptions::default()
    };
    let (r, _out) = run(&media::cut_video(), &opts);
    let res = r.unwrap().result;
    assert_eq!(paths(&res["keyframes"]).len(), 1);
    let thumbs = paths(&res["thumbnails"]);
    assert_eq!(thumbs.len(), 3);
    assert_eq!(jpeg_size(&thumbs[2]), (160, 90));
}

#[test]
fn mp3_track_is_stream_copied() {
    let (r, _out) = run(&media::mp3_video(), &VideoOptions::default());
    let res = r.unwrap().result;
    assert_eq!(res["metadata"]["audio_codec"], "mp3");
    assert_eq!(res["metadata"]["codec"], "mpeg4");
    let audio = PathBuf::from(res["audio_path"].as_str().unwrap());
    let ictx = ffmpeg_next::format::input(&audio).unwrap();
    // Copied packets keep the source's 64 kbit/s (an encode would give 128).
    let kbps = ictx.bit_rate() as f64 / 1000.0;
    assert!((60.0..=68.0).contains(&kbps), "{kbps} kbit/s");
}

#[test]
fn video_without_audio_has_no_audio_path() {
    let (r, _out) = run(&media::silent_video(), &VideoOptions::default());
    let res = r.unwrap().result;
    assert_eq!(res["metadata"]["has_audio"], false);
    assert!(res["metadata"]["audio_codec"].is_null());
    assert!(res["audio_path"].is_null());
    assert_eq!(paths(&res["thumbnails"]).len(), 5);
}

#[test]
fn transcription_without_a_model_is_skipped_cleanly() {
    let mut opts = VideoOptions {
        transcribe: true,
        generate_thumbnails: false,
        ..VideoOptions::default()
    };
    opts.audio.model = media::dir().join("no-such-model.bin");
    let (r, _out) = run(&media::cut_video(), &opts);
    let res = r.unwrap().result;
    assert!(res["transcript"].is_null());
    assert!(res["transcription_skipped"]
        .as_str()
        .unwrap()
        .contains("no Whisper model"));
    assert_eq!(res["success"], true);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let opts = VideoOptions::default();
    let missing = media::dir().join("missing.mp4");
    assert!(matches!(
        run(&missing, &opts).0,
        Err(ProcessError::Input { .. })
    ));

    let empty = media::dir().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(run(&empty, &opts).0, Err(ProcessError::Empty(_))));

    let text = media::dir().join("notes.mp4");
    std::fs::write(&text, "this is not a video\n".repeat(50)).unwrap();
    let e = run(&text, &opts).0.unwrap_err();
    assert!(matches!(e, ProcessError::InvalidMedia { .. }), "{e}");

    let noise = media::garbage("noise.mp4", 64 * 1024);
    assert!(matches!(
        run(&noise, &opts).0,
        Err(ProcessError::InvalidMedia { .. })
    ));

    // MP4 with its index (moov) at the end: cut in half, it cannot be opened.
    let half = media::truncated(&media::cut_video(), "half.mp4", 0.5);
    let e = run(&half, &opts).0.unwrap_err();
    assert!(matches!(e, ProcessError::InvalidMedia { .. }), "{e}");

    // Audio only: not a video.
    let e = run(&media::tone_wav(), &opts).0.unwrap_err();
    assert!(e.to_string().contains("no video stream"), "{e}");
}

#[test]
fn truncated_stream_formats_do_not_panic() {
    // Matroska cut mid-stream: opens, decodes what is there.
    let cut = media::truncated(&media::mp3_video(), "cut.mkv", 0.4);
    let (r, _out) = run(&cut, &VideoOptions::default());
    match r {
        Ok(o) => assert!(!o.result["thumbnails"].as_array().unwrap().is_empty()),
        Err(e) => assert!(matches!(e, ProcessError::InvalidMedia { .. }), "{e}"),
    }
    // Corrupt bytes in the middle of an AVI.
    let src = std::fs::read(media::silent_video()).unwrap();
    let mut bad = src.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 2000] {
        *b ^= 0x5A;
    }
    let p = media::dir().join("corrupt.avi");
    std::fs::write(&p, bad).unwrap();
    let (r, _out) = run(&p, &VideoOptions::default());
    if let Err(e) = r {
        assert!(matches!(e, ProcessError::InvalidMedia { .. }), "{e}");
    }
}

#[test]
fn cancelled_job_stops() {
    let cancel = Cancel::new();
    cancel.cancel();
    let out = tempfile::tempdir().unwrap();
    let r = process_video(
        &media::cut_video(),
        &VideoOptions::default(),
        &NoProgress,
        &cancel,
        out.path(),
    );
    assert!(matches!(r, Err(ProcessError::Cancelled)));
}

#[test]
fn progress_reaches_100() {
    let seen = std::sync::Mutex::new(Vec::new());
    let sink = |p: morag_agent::media::Progress| seen.lock().unwrap().push(p.percent);
    let out = tempfile::tempdir().unwrap();
    process_video(
        &media::cut_video(),
        &VideoOptions::default(),
        &sink,
        &Cancel::new(),
        out.path(),
    )
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.last(), Some(&100.0));
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
}

/// What `morag-agent process clip.mp4 --type video` runs: without a Whisper model the result
/// says why there is no transcript, and the result document is written for every kind.
#[test]
fn dispatch_writes_the_result_file_and_explains_a_skipped_transcript() {
    use morag_agent::media::{self as m, MediaKind, RunOptions};
    let out = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::default();
    opts.audio.model = media::dir().join("no-such-model.bin");
    let clip = media::cut_video();
    let r = m::run(
        MediaKind::Video,
        &clip,
        &opts,
        out.path(),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    let note = r.result["transcription_skipped"].as_str().unwrap();
    assert!(
        note.starts_with("no Whisper model at ") && note.contains("no-such-model.bin"),
        "{note}"
    );
    let name = m::result_file_name(&clip);
    let doc = r
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .expect("result artifact");
    let back: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&doc.path).unwrap()).unwrap();
    assert_eq!(back, r.result);

    let still = media::still("dispatch.png", "64x48", &[]);
    let r = m::run(
        MediaKind::Image,
        &still,
        &opts,
        out.path(),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    assert!(r.artifacts.iter().any(|a| a.name == "dispatch_result.json"));
}
