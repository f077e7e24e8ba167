//! The CTranslate2 -> ggml converter against the Python reference (byte for byte), its errors,
//! and `model fetch` failing fast and clearly without a network.

mod audio_common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use morag_agent::models::{convert_ct2_dir, ConvertError, WeightType};

/// The reference converter, outside the repository (../shared/tools from the repo root).
fn reference_script() -> Result<std::path::PathBuf, String> {
    let p = audio_common::repo_root().join("../shared/tools/ct2_to_ggml.py");
    if !p.exists() {
        return Err(format!("reference converter {} not found", p.display()));
    }
    let numpy = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .map_err(|e| format!("python3 not available: {e}"))?;
    if !numpy.status.success() {
        return Err("python3 has no numpy (scripts/setup-test-model.sh installs it)".into());
    }
    Ok(p)
}

#[test]
fn converter_matches_python_reference_byte_for_byte() {
    let ct2 = fixture_or_skip!("converter_matches_reference", audio_common::ct2_dir());
    let script = fixture_or_skip!("converter_matches_reference", reference_script());
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.bin");
    let theirs = tmp.path().join("reference.bin");

    let out = Command::new("python3")
        .arg(&script)
        .arg(&ct2)
        .arg(&theirs)
        .env_remove("MEL_NPZ")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = convert_ct2_dir(&ct2, &ours, WeightType::F16).unwrap();
    assert_eq!(
        summary.hparams,
        [51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80]
    );
    assert_eq!(summary.tensors, 167);
    assert_eq!(summary.tokens, 50256);

    let a = std::fs::read(&ours).unwrap();
    let b = std::fs::read(&theirs).unwrap();
    assert_eq!(a.len(), b.len(), "sizes differ");
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("first difference at byte {i} of {}", a.len());
    }
    assert_eq!(summary.bytes, a.len() as u64);
}

#[test]
fn converter_rejects_bad_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.bin");
    assert!(matches!(
        convert_ct2_dir(tmp.path(), &out, WeightType::F16),
        Err(ConvertError::Io { .. })
    ));
    std::fs::write(tmp.path().join("model.bin"), b"\x06\x00\x00\x00garbage").unwrap();
    std::fs::write(tmp.path().join("vocabulary.txt"), "a\n<|endoftext|>\n").unwrap();
    let e = convert_ct2_dir(tmp.path(), &out, WeightType::F16).unwrap_err();
    assert!(matches!(e, ConvertError::Format(_)), "{e}");
}

#[test]
fn converter_rejects_a_truncated_model() {
    let ct2 = fixture_or_skip!("converter_rejects_truncated", audio_common::ct2_dir());
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(ct2.join("model.bin")).unwrap();
    std::fs::write(tmp.path().join("model.bin"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::copy(
        ct2.join("vocabulary.txt"),
        tmp.path().join("vocabulary.txt"),
    )
    .unwrap();
    let e = convert_ct2_dir(tmp.path(), &tmp.path().join("o.bin"), WeightType::F16).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn fetch_fails_fast_and_clearly_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_morag-agent"))
        .args(["model", "fetch", "tiny.en", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        // A machine with internet access: the download must then be the verified model.
        assert!(stdout.contains("verified"), "{stdout}");
        return;
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        stderr.contains("cannot reach https://huggingface.co/"),
        "{stderr}"
    );
    assert!(stderr.contains("import-ct2"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!tmp.path().join("ggml-tiny.en.bin").exists());
    assert!(!Path::new(&tmp.path().join("ggml-tiny.en.bin.partial")).exists());
}
