//! ONNX Runtime's CUDA build (onnxruntime-gpu 1.31.1) where its CUDA provider cannot run: it
//! loads, says why CUDA is not asked for, and diarization runs on its CPU provider. Its own test
//! binary, since the runtime is loaded once per process. Needs a models directory holding the
//! speech models and the CUDA build (`morag-agent model import onnxruntime-gpu`, 313 MB, not
//! part of the test set) in `MORAG_ORT_GPU_MODELS`; skipped, saying so, without it.

use morag_agent::media::Cancel;
use morag_agent::speech::{onnx, DiarizeOptions, SpeechModels};

mod audio_common;
mod speech_common;

#[test]
fn the_cuda_build_without_a_usable_gpu_diarizes_on_the_cpu() {
    let Some(dir) = std::env::var_os("MORAG_ORT_GPU_MODELS").map(std::path::PathBuf::from) else {
        eprintln!("skipped: MORAG_ORT_GPU_MODELS is not set");
        return;
    };
    let jfk = match audio_common::jfk() {
        Ok(p) => p,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let models = SpeechModels::load(&dir, 2, Some(0), Some(true), Some(false));
    let why = onnx::cuda_ready().unwrap_err();
    eprintln!("CUDA not asked for: {why}");
    if morag_agent::gpu::cuda_driver_present() {
        return; // a GPU machine: what is missing there depends on the machine
    }
    assert!(why.contains("not found"), "{why}");
    let diarizer = models
        .diarizer
        .as_ref()
        .expect("diarization loads on the CPU provider");
    let samples = speech_common::load_16k(&jfk);
    let turns = diarizer
        .diarize(&samples, &DiarizeOptions::default(), &Cancel::new())
        .unwrap();
    assert!(
        !turns.is_empty() && turns.iter().all(|t| t.speaker == 0),
        "{turns:?}"
    );
}
