//! The GE2E speaker encoder (a 3-layer LSTM over 40-band mel frames, a linear layer, ReLU,
//! L2 norm), run on the CPU from the safetensors file `morag-agent model import ge2e` writes.
//!
//! Features follow the encoder's training: 16 kHz audio, a power (not log) mel spectrogram with
//! 25 ms Hann windows every 10 ms (librosa's `melspectrogram` with centred frames and zero
//! padding, Slaney filters), partial utterances of 160 frames (1.6 s). The matrix products go
//! through ndarray (matrixmultiply's sgemm); all partials of a recording run as one batch so
//! the recurrent products are matrix-matrix.

use std::path::Path;
use std::sync::Arc;

use ndarray::{linalg::general_mat_mul, s, Array2, ArrayView2, Axis};
use realfft::{RealFftPlanner, RealToComplex};

/// Mel bands.
pub const N_MELS: usize = 40;
/// FFT size and window (25 ms).
const N_FFT: usize = 400;
/// Hop (10 ms).
pub const HOP: usize = 160;
/// Frames in one partial utterance (1.6 s).
pub const PARTIAL_FRAMES: usize = 160;
/// LSTM width and embedding size.
const HIDDEN: usize = 256;
/// Embedding size.
pub const EMBED: usize = 256;
const LAYERS: usize = 3;

/// One loaded encoder (shareable between threads).
pub struct Ge2e {
    layers: Vec<Layer>,
    /// Linear W^T [H, E] and bias.
    linear: (Array2<f32>, Vec<f32>),
    filters: Array2<f32>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for Ge2e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ge2e").finish_non_exhaustive()
    }
}

/// One LSTM layer's weights.
struct Layer {
    /// W_ih^T [in, 4H].
    w_ih_t: Array2<f32>,
    /// W_hh [4H, H] row-major (for small batches) and W_hh^T [H, 4H] (for matrix products).
    w_hh: Vec<f32>,
    w_hh_t: Array2<f32>,
    /// b_ih + b_hh [4H].
    bias: Vec<f32>,
}

/// Batches up to this size take the recurrent product row by row (no packing of W_hh for
/// every step, which dominates sgemm at small batches); larger ones use sgemm.
const SMALL_BATCH: usize = 16;

/// A mel spectrogram: one row of [`N_MELS`] per 10 ms frame.
pub type Mel = Array2<f32>;

impl Ge2e {
    /// Load the converted weights.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| format!("{} is not a safetensors file: {e}", path.display()))?;
        let get = |name: &str, shape: &[usize]| -> Result<Array2<f32>, String> {
            let t = st
                .tensor(name)
                .map_err(|_| format!("{} has no tensor {name}", path.display()))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
                return Err(format!(
                    "{}: {name} is {:?} {:?}, expected F32 {shape:?}",
                    path.display(),
                    t.dtype(),
                    t.shape()
                ));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let rows = shape[0];
            let cols = shape.get(1).copied().unwrap_or(1);
            Array2::from_shape_vec((rows, cols), v).map_err(|e| e.to_string())
        };
        let mut layers = Vec::new();
        for l in 0..LAYERS {
            let input = if l == 0 { N_MELS } else { HIDDEN };
            let w_ih = get(&format!("lstm.weight_ih_l{l}"), &[4 * HIDDEN, input])?;
            let w_hh = get(&format!("lstm.weight_hh_l{l}"), &[4 * HIDDEN, HIDDEN])?;
            let b_ih = get(&format!("lstm.bias_ih_l{l}"), &[4 * HIDDEN])?;
            let b_hh = get(&format!("lstm.bias_hh_l{l}"), &[4 * HIDDEN])?;
            let bias: Vec<f32> = b_ih.iter().zip(b_hh.iter()).map(|(a, b)| a + b).collect();
            layers.push(Layer {
                w_ih_t: w_ih.t().as_standard_layout().into_owned(),
                w_hh: w_hh.iter().copied().collect(),
                w_hh_t: w_hh.t().as_standard_layout().into_owned(),
                bias,
            });
        }
        let w = get("linear.weight", &[EMBED, HIDDEN])?;
        let b = get("linear.bias", &[EMBED])?;
        let filters = crate::models::mel::mel_filters(16_000.0, N_FFT, N_MELS);
        let filters = Array2::from_shape_vec((N_MELS, N_FFT / 2 + 1), filters)
            .map_err(|e| e.to_string())?
            .t()
            .as_standard_layout()
            .into_owned();
        let window = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        Ok(Self {
            layers,
            linear: (
                w.t().as_standard_layout().into_owned(),
                b.iter().copied().collect(),
            ),
            filters,
            window,
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT),
        })
    }

    /// The power mel spectrogram of 16 kHz `wav`: `1 + len / 160` frames, centred, zero padded.
    pub fn mel(&self, wav: &[f32]) -> Mel {
        let n_frames = 1 + wav.len() / HOP;
        let pad = N_FFT / 2;
        let mut power = Array2::<f32>::zeros((n_frames, N_FFT / 2 + 1));
        let mut frame = self.fft.make_input_vec();
        let mut spec = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        for (t, mut row) in power.axis_iter_mut(Axis(0)).enumerate() {
            for (k, x) in frame.iter_mut().enumerate() {
                let at = (t * HOP + k) as isize - pad as isize;
                let v = if at >= 0 && (at as usize) < wav.len() {
                    wav[at as usize]
                } else {
                    0.0
                };
                *x = v * self.window[k];
            }
            self.fft
                .process_with_scratch(&mut frame, &mut spec, &mut scratch)
                .expect("FFT buffers sized by the planner");
            for (p, c) in row.iter_mut().zip(&spec) {
                *p = c.re * c.re + c.im * c.im;
            }
        }
        power.dot(&self.filters)
    }

    /// Embeddings of `partials` (each [`PARTIAL_FRAMES`] x [`N_MELS`] rows of a mel
    /// spectrogram), run as one batch; each is L2-normalised.
    pub fn embed_partials(&self, partials: &[ArrayView2<'_, f32>]) -> Vec<Vec<f32>> {
        let b = partials.len();
        if b == 0 {
            return Vec::new();
        }
        let t_len = PARTIAL_FRAMES;
        // Time-major input: row t * b + i is frame t of partial i.
        let mut x = Array2::<f32>::zeros((t_len * b, N_MELS));
        for (i, p) in partials.iter().enumerate() {
            for t in 0..t_len.min(p.nrows()) {
                x.row_mut(t * b + i).assign(&p.row(t));
            }
        }
        let mut h = Array2::<f32>::zeros((b, HIDDEN));
        for layer in &self.layers {
            // Input projections of every step at once, biases folded in.
            let mut gx = x.dot(&layer.w_ih_t);
            for mut row in gx.axis_iter_mut(Axis(0)) {
                row.iter_mut().zip(&layer.bias).for_each(|(g, b)| *g += b);
            }
            let mut out = Array2::<f32>::zeros((t_len * b, HIDDEN));
            h.fill(0.0);
            let mut c = Array2::<f32>::zeros((b, HIDDEN));
            for t in 0..t_len {
                let mut g = gx.slice(s![t * b..(t + 1) * b, ..]).to_owned();
                if b <= SMALL_BATCH {
                    recurrent(
                        &layer.w_hh,
                        h.as_slice().expect("standard layout"),
                        g.as_slice_mut().expect("standard layout"),
                    );
                } else {
                    general_mat_mul(1.0, &h, &layer.w_hh_t, 1.0, &mut g);
                }
                for i in 0..b {
                    let gi = g.row(i);
                    let gi = gi.as_slice().expect("standard layout");
                    let ci = c.row_mut(i).into_slice().expect("standard layout");
                    let hi = h.row_mut(i).into_slice().expect("standard layout");
                    for k in 0..HIDDEN {
                        let ig = sigmoid(gi[k]);
                        let fg = sigmoid(gi[HIDDEN + k]);
                        let gg = gi[2 * HIDDEN + k].tanh();
                        let og = sigmoid(gi[3 * HIDDEN + k]);
                        ci[k] = fg * ci[k] + ig * gg;
                        hi[k] = og * ci[k].tanh();
                    }
                }
                out.slice_mut(s![t * b..(t + 1) * b, ..]).assign(&h);
            }
            x = out;
        }
        // `h` is the last layer's final state.
        let mut e = h.dot(&self.linear.0);
        e.axis_iter_mut(Axis(0))
            .map(|mut row| {
                row.iter_mut()
                    .zip(&self.linear.1)
                    .for_each(|(v, b)| *v = (*v + b).max(0.0));
                normalised(row.to_vec())
            })
            .collect()
    }

    /// The embedding of one utterance as the encoder's reference computes it: volume raised to
    /// -30 dBFS (never lowered), partials at 1.3 per second, the last kept when it covers at
    /// least 75 % of its 1.6 s, their mean L2-normalised.
    pub fn embed_utterance(&self, wav: &[f32]) -> Vec<f32> {
        let wav = normalise_volume(wav, -30.0);
        let n_frames = (wav.len() + 1).div_ceil(HOP);
        let frame_step = ((16_000.0 / 1.3) / HOP as f64).round() as usize;
        let steps = (n_frames + frame_step + 1)
            .saturating_sub(PARTIAL_FRAMES)
            .max(1);
        let mut starts: Vec<usize> = (0..steps).step_by(frame_step).collect();
        if starts.len() > 1 {
            let last = starts[starts.len() - 1] * HOP;
            let coverage = (wav.len() as f64 - last as f64) / (PARTIAL_FRAMES * HOP) as f64;
            if coverage < 0.75 {
                starts.pop();
            }
        }
        let need = (starts[starts.len() - 1] + PARTIAL_FRAMES) * HOP;
        let mut padded = wav;
        if need >= padded.len() {
            padded.resize(need, 0.0);
        }
        let mel = self.mel(&padded);
        let views: Vec<_> = starts
            .iter()
            .map(|&s0| mel.slice(s![s0..s0 + PARTIAL_FRAMES, ..]))
            .collect();
        mean_normalised(&self.embed_partials(&views))
    }
}

/// `g[b][j] += w[j] . h[b]` for every row `j` of `w` ([4H, H] row-major) and batch row `b`
/// (`h`: [B, H], `g`: [B, 4H], both row-major).
fn recurrent(w: &[f32], h: &[f32], g: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { recurrent_avx2(w, h, g) };
        return;
    }
    recurrent_any(w, h, g);
}

/// [`recurrent`] compiled for AVX2 (the same code, 8 lanes wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn recurrent_avx2(w: &[f32], h: &[f32], g: &mut [f32]) {
    recurrent_any(w, h, g);
}

#[inline(always)]
fn recurrent_any(w: &[f32], h: &[f32], g: &mut [f32]) {
    let gates = w.len() / HIDDEN;
    for (j, row) in w.chunks_exact(HIDDEN).enumerate() {
        for (hb, gb) in h.chunks_exact(HIDDEN).zip(g.chunks_exact_mut(gates)) {
            let mut acc = [0f32; 8];
            for (x, y) in row.chunks_exact(8).zip(hb.chunks_exact(8)) {
                for k in 0..8 {
                    acc[k] += x[k] * y[k];
                }
            }
            gb[j] += acc.iter().sum::<f32>();
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `v / |v|` (unchanged when zero).
pub fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

/// The L2-normalised mean of `vs`.
pub fn mean_normalised(vs: &[Vec<f32>]) -> Vec<f32> {
    let mut m = vec![0.0f32; vs.first().map_or(0, Vec::len)];
    for v in vs {
        m.iter_mut().zip(v).for_each(|(a, b)| *a += b);
    }
    normalised(m)
}

/// Raise `wav`'s level to `target_dbfs` (RMS on the int16 scale); never lowers it.
pub fn normalise_volume(wav: &[f32], target_dbfs: f64) -> Vec<f32> {
    const INT16_MAX: f64 = 32767.0;
    let mean_sq = wav
        .iter()
        .map(|&x| {
            let v = x as f64 * INT16_MAX;
            v * v
        })
        .sum::<f64>()
        / wav.len().max(1) as f64;
    let rms = mean_sq.sqrt();
    if rms <= 0.0 {
        return wav.to_vec();
    }
    let change = target_dbfs - 20.0 * (rms / INT16_MAX).log10();
    if change < 0.0 {
        return wav.to_vec();
    }
    let gain = 10f64.powf(change / 20.0) as f32;
    wav.iter().map(|x| x * gain).collect()
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
