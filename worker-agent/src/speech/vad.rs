//! Voice activity: where in a recording someone speaks, from Silero VAD v6 (ONNX, the file
//! faster-whisper's wheel ships as `faster_whisper/assets/silero_vad_v6.onnx`, MIT).
//!
//! The model reads 16 kHz audio in chunks of 512 samples (32 ms), each preceded by the last 64
//! samples of the chunk before it, and carries an LSTM state from chunk to chunk; the ONNX graph
//! takes a whole sequence of chunks at once (`input` `[chunks, 576]`, `h`/`c` `[1, 1, 128]`)
//! and gives one speech probability per chunk. It is run 10 s at a time, the state carried
//! over unless the last 10 s held no speech. Transcription uses the probabilities to cut long
//! audio only where nobody speaks and to skip long stretches without speech
//! ([`crate::media::pieces`]).

use ndarray::{Array2, Array3};
use ort::value::TensorRef;

use super::onnx::OnnxModel;
use crate::cancel::Cancel;

/// Samples per chunk (one probability each): 32 ms at 16 kHz.
pub const CHUNK: usize = 512;
/// Samples of the previous chunk put in front of each chunk.
const CONTEXT: usize = 64;
/// Chunks per model call (10 s of audio).
const CALL_CHUNKS: usize = 312;
/// After a call whose chunks all stay below this, the next call starts from a fresh state:
/// minutes of music or noise carried in the state held the model's probabilities for the
/// speech after them down to 0.4-0.5 (0.8-0.9 from a fresh state), and words were skipped.
const RESET_BELOW: f32 = 0.35;
/// The LSTM state's size.
const STATE: usize = 128;

/// The loaded Silero model.
#[derive(Debug)]
pub struct Vad {
    model: OnnxModel,
}

impl Vad {
    pub fn new(model: OnnxModel) -> Self {
        Self { model }
    }

    /// The speech probability of every 32 ms chunk of 16 kHz `samples` (the last chunk zero
    /// padded): `samples.len().div_ceil(CHUNK)` values in 0..=1.
    pub fn probabilities(&self, samples: &[f32], cancel: &Cancel) -> Result<Vec<f32>, String> {
        let chunks = samples.len().div_ceil(CHUNK);
        let mut probs = Vec::with_capacity(chunks);
        let mut h = Array3::<f32>::zeros((1, 1, STATE));
        let mut c = Array3::<f32>::zeros((1, 1, STATE));
        let mut first = 0;
        while first < chunks {
            if cancel.is_cancelled() {
                return Err("cancelled".into());
            }
            if first > 0
                && probs[first - CALL_CHUNKS..]
                    .iter()
                    .all(|&p| p < RESET_BELOW)
            {
                h.fill(0.0);
                c.fill(0.0);
            }
            let n = (chunks - first).min(CALL_CHUNKS);
            let mut input = Array2::<f32>::zeros((n, CONTEXT + CHUNK));
            for (row, k) in (first..first + n).enumerate() {
                let at = k * CHUNK;
                let mut line = input.row_mut(row);
                if k > 0 {
                    let ctx = &samples[at - CONTEXT..at];
                    for (d, s) in line.iter_mut().zip(ctx) {
                        *d = *s;
                    }
                }
                let end = (at + CHUNK).min(samples.len());
                for (d, s) in line.iter_mut().skip(CONTEXT).zip(&samples[at..end]) {
                    *d = *s;
                }
            }
            let (p, hn, cn) = self.model.with(|session| {
                let outputs = session
                    .run(ort::inputs![
                        "input" => TensorRef::from_array_view(&input).map_err(|e| e.to_string())?,
                        "h" => TensorRef::from_array_view(&h).map_err(|e| e.to_string())?,
                        "c" => TensorRef::from_array_view(&c).map_err(|e| e.to_string())?,
                    ])
                    .map_err(|e| format!("voice activity detection failed: {e}"))?;
                let probs = outputs["speech_probs"]
                    .try_extract_array::<f32>()
                    .map_err(|e| format!("voice activity output: {e}"))?;
                if probs.len() != n {
                    return Err(format!(
                        "voice activity model gave {} probabilities for {n} chunks",
                        probs.len()
                    ));
                }
                let state = |name: &str| -> Result<Array3<f32>, String> {
                    let a = outputs[name]
                        .try_extract_array::<f32>()
                        .map_err(|e| format!("voice activity state: {e}"))?;
                    a.to_owned()
                        .into_shape_with_order((1, 1, STATE))
                        .map_err(|e| format!("voice activity state {name}: {e}"))
                };
                Ok((
                    probs.iter().copied().collect::<Vec<f32>>(),
                    state("hn")?,
                    state("cn")?,
                ))
            })?;
            probs.extend(p);
            h = hn;
            c = cn;
            first += n;
        }
        Ok(probs)
    }
}

/// The detector in the models directory beside the Whisper model `whisper_model`
/// ([`super::files::VAD`], run by the ONNX Runtime there: its CUDA build when Whisper is on a
/// GPU and it was imported, though the detector itself runs on the CPU), or why it cannot be
/// used.
pub fn load_beside(whisper_model: &std::path::Path, gpu: bool) -> Result<Vad, String> {
    let dir = super::models_dir(whisper_model);
    let (lib, model) = (
        super::onnx::library_in(&dir, gpu),
        dir.join(super::files::VAD),
    );
    for f in [&lib, &model] {
        if !f.is_file() {
            return Err(format!(
                "missing {} (scripts/setup-test-model.sh or `morag-agent model import` puts it there)",
                f.display()
            ));
        }
    }
    let env = super::onnx::runtime(&lib)?;
    // A small LSTM run chunk after chunk: one thread is as fast as more, on the CPU.
    Ok(Vad::new(OnnxModel::load(env, &model, 1, None)?))
}
