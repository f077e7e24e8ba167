//! `morag-agent process` as a user runs it: the JSON on stdout, the four files and the result
//! document in --out, and one clear line plus a non-zero exit code for bad input.

mod audio_common;

use std::process::{Command, Output};

fn agent(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_morag-agent"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn process_writes_the_four_files_and_prints_json() {
    let model = fixture_or_skip!("cli_process", audio_common::model());
    let media = fixture_or_skip!("cli_process", audio_common::media());
    let out = tempfile::tempdir().unwrap();
    let input = media.join("speech.mp3");
    let o = agent(&[
        os("process"),
        os(&input),
        os("--out"),
        os(out.path()),
        os("--model"),
        os(&model),
        os("--threads"),
        os("2"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["kind"], "audio");
    assert!(v["result"]["transcript"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("weather"));
    for f in [
        "speech_transcript.txt",
        "speech_segments.json",
        "speech.md",
        "speech_metadata.json",
        "speech_result.json",
    ] {
        let p = out.path().join(f);
        assert!(
            p.is_file() && std::fs::metadata(&p).unwrap().len() > 0,
            "{f}"
        );
    }
    assert_eq!(v["artifacts"].as_array().unwrap().len(), 5);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("speech_result.json")).unwrap())
            .unwrap();
    assert_eq!(doc, v["result"], "the result file is the printed result");
}

#[test]
fn bad_inputs_exit_non_zero_with_one_clear_line() {
    let media = fixture_or_skip!("cli_bad_inputs", audio_common::media());
    let out = tempfile::tempdir().unwrap();
    let cases: [(&str, i32, &str); 4] = [
        ("notmedia.wav", 65, "not valid audio media"),
        ("empty.wav", 65, "is empty"),
        ("truncated.flac", 65, "truncated"),
        ("missing.wav", 66, "cannot read input"),
    ];
    for (name, code, needle) in cases {
        let o = agent(&[
            os("process"),
            os(&media.join(name)),
            os("--out"),
            os(out.path()),
            os("--model"),
            os("/nonexistent/model.bin"),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{name}: {stderr}");
        assert!(o.stdout.is_empty(), "{name}");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.starts_with("morag-agent: error: "), "{stderr}");
        assert!(
            stderr.contains(needle) && stderr.contains(name),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn missing_model_and_bad_language_are_explained() {
    let media = fixture_or_skip!("cli_missing_model", audio_common::media());
    let o = agent(&[
        os("process"),
        os(&media.join("speech.wav")),
        os("--model"),
        os("/nonexistent/model.bin"),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("setup-test-model.sh"), "{stderr}");

    let o = agent(&[
        os("process"),
        os(&media.join("speech.wav")),
        os("--language"),
        os("klingon"),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("unknown language"), "{stderr}");
}
