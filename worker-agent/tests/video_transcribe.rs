//! A video's soundtrack transcribed through the audio processor (real tiny.en model, real
//! speech: jfk.wav under a test pattern). Skips with a printed reason when the model or the
//! recording cannot be set up.

mod audio_common;
mod video_common;

use std::sync::Arc;

use morag_agent::media::audio::{AudioOptions, Transcriber};
use morag_agent::media::video::{process_video, VideoOptions};
use morag_agent::media::{Cancel, NoProgress};

#[test]
#[rustfmt::skip]
fn video_soundtrack_is_transcribed_in_morags_shape() {
    let model = fixture_or_skip!("video_transcribe", audio_common::model());
    let jfk = fixture_or_skip!("video_transcribe", audio_common::jfk());
    let video = video_common::dir().join("jfk.mp4");
    video_common::ffmpeg(&[
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10",
        "-i", jfk.to_str().unwrap(),
        "-shortest", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", video.to_str().unwrap(),
    ]);
    let _guard = audio_common::whisper_lock();
    let opts = VideoOptions {
        transcribe: true,
        audio: AudioOptions {
            model: model.clone(),
            ..AudioOptions::default()
        },
        transcriber: Some(Arc::new(Transcriber::load(&model).unwrap())),
        ..VideoOptions::default()
    };
    let out = tempfile::tempdir().unwrap();
    let r = process_video(&video, &opts, &NoProgress, &Cancel::new(), out.path()).unwrap();
    let res = &r.result;
    let transcript = res["transcript"].as_str().unwrap().to_lowercase();
    assert!(transcript.contains("fellow americans"), "{transcript}");
    let segments = res["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    for key in ["start", "end", "text", "speaker", "confidence", "topic_id", "topic_label"] {
        assert!(segments[0].get(key).is_some(), "segment lacks {key}");
    }
    assert_eq!(res["audio_processing_result"]["transcript"], res["transcript"]);
    assert!(res["audio_path"].as_str().unwrap().ends_with("jfk_audio.mp3"));
    // 5 thumbnails + the MP3 + MoRAG's four transcript files.
    let names: Vec<&str> = r.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"jfk_transcript.txt"), "{names:?}");
    assert_eq!(r.artifacts.len(), 5 + 1 + 4, "{names:?}");
}
