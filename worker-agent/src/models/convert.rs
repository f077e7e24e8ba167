//! CTranslate2 Whisper model -> whisper.cpp ggml file.
//!
//! # Output layout (little-endian i32 unless noted)
//!
//! ```text
//! magic 0x67676d6c ("ggml")
//! hparams: n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer
//!          n_text_ctx n_text_state n_text_head n_text_layer n_mels
//! ftype (ggml's file type of the big matrices; quantized types add 1000 x ggml's QNT_VERSION)
//! mel filters: n_mel, n_fft, then n_mel * n_fft f32
//! vocabulary: count, then per token: length, bytes (regular BPE tokens before <|endoftext|>)
//! tensors: n_dims, name length, ggml type, dims innermost first, name, data
//! ```
//!
//! Tensors carry OpenAI's state-dict names. CTranslate2 fuses the self-attention q/k/v
//! projections (and the cross-attention k/v) into one matrix: they are split here, and the
//! key bias, which Whisper does not have, is dropped.
//!
//! Which type each tensor gets is whisper.cpp's rule (it checks every tensor's size against it
//! on load): the matrices of the attention and MLP layers and the token embedding take the
//! chosen [`WeightType`]; the two convolution kernels are f16 (whisper.cpp 1.8.3 cannot run the
//! f32 kernels of an all-f32 file, so none is offered);
//! biases, norms and positional embeddings are always f32. Quantized blocks are made by ggml's
//! own `ggml_quantize_chunk` (the library whisper.cpp loads them with), so the bytes are the ones
//! whisper.cpp's `quantize` tool writes.

use std::io::Write;
use std::path::Path;

use super::ct2::{Ct2Model, Tensor};
use super::mel::{bytes_to_unicode, mel_filters};
use super::ConvertError;

/// ggml's file magic.
pub const GGML_MAGIC: i32 = 0x6767_6d6c;
/// Longest vocabulary file accepted.
pub const MAX_VOCAB_BYTES: u64 = 64 << 20;

/// The storage type of a model's big matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightType {
    /// 16-bit floats (what CTranslate2 ships and whisper.cpp publishes).
    #[default]
    F16,
    /// 8-bit blocks of 32 with an f16 scale (the counterpart of CTranslate2's int8).
    Q8_0,
    /// 5-bit blocks of 32 with an f16 scale.
    Q5_0,
    /// 5-bit blocks of 32 with an f16 scale and minimum.
    Q5_1,
}

impl WeightType {
    /// Every type, in the order the CLI lists them.
    pub const ALL: [WeightType; 4] = [
        WeightType::F16,
        WeightType::Q8_0,
        WeightType::Q5_0,
        WeightType::Q5_1,
    ];

    /// The name used on the command line and in file names (`f16`, `q8_0`, ...).
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F16 => "f16",
            WeightType::Q8_0 => "q8_0",
            WeightType::Q5_0 => "q5_0",
            WeightType::Q5_1 => "q5_1",
        }
    }

    /// ggml's tensor type.
    fn ggml_type(self) -> whisper_rs_sys::ggml_type {
        match self {
            WeightType::F16 => whisper_rs_sys::ggml_type_GGML_TYPE_F16,
            WeightType::Q8_0 => whisper_rs_sys::ggml_type_GGML_TYPE_Q8_0,
            WeightType::Q5_0 => whisper_rs_sys::ggml_type_GGML_TYPE_Q5_0,
            WeightType::Q5_1 => whisper_rs_sys::ggml_type_GGML_TYPE_Q5_1,
        }
    }

    /// The header's ftype: ggml's file type, plus 1000 x QNT_VERSION for quantized files.
    fn header_ftype(self) -> i32 {
        let (ftype, quantized) = match self {
            WeightType::F16 => (whisper_rs_sys::ggml_ftype_GGML_FTYPE_MOSTLY_F16, false),
            WeightType::Q8_0 => (whisper_rs_sys::ggml_ftype_GGML_FTYPE_MOSTLY_Q8_0, true),
            WeightType::Q5_0 => (whisper_rs_sys::ggml_ftype_GGML_FTYPE_MOSTLY_Q5_0, true),
            WeightType::Q5_1 => (whisper_rs_sys::ggml_ftype_GGML_FTYPE_MOSTLY_Q5_1, true),
        };
        let version = if quantized {
            (whisper_rs_sys::GGML_QNT_VERSION * whisper_rs_sys::GGML_QNT_VERSION_FACTOR) as i32
        } else {
            0
        };
        ftype + version
    }
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        WeightType::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = WeightType::ALL.iter().map(|w| w.name()).collect();
                format!("unknown weight type {s:?}: use one of {}", names.join(", "))
            })
    }
}

/// What a conversion produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSummary {
    /// The ten hparams in file order.
    pub hparams: [i32; 10],
    pub tensors: usize,
    pub tokens: usize,
    pub bytes: u64,
}

/// Convert the CTranslate2 model in `src` (model.bin, vocabulary.txt) into a ggml file `dst`.
pub fn convert_ct2_dir(
    src: &Path,
    dst: &Path,
    weights: WeightType,
) -> Result<ConvertSummary, ConvertError> {
    let model_path = src.join("model.bin");
    let bytes = std::fs::read(&model_path).map_err(|e| ConvertError::io(&model_path, e))?;
    let model = Ct2Model::parse(bytes)?;
    if model.spec != "WhisperSpec" {
        return Err(ConvertError::Format(format!(
            "{} holds a {} model, not Whisper",
            model_path.display(),
            model.spec
        )));
    }
    let vocab_path = src.join("vocabulary.txt");
    let len = std::fs::metadata(&vocab_path)
        .map_err(|e| ConvertError::io(&vocab_path, e))?
        .len();
    if len > MAX_VOCAB_BYTES {
        return Err(ConvertError::Format(format!(
            "{} is {len} bytes (limit {MAX_VOCAB_BYTES})",
            vocab_path.display()
        )));
    }
    let vocab =
        std::fs::read_to_string(&vocab_path).map_err(|e| ConvertError::io(&vocab_path, e))?;
    let tokens = decode_vocabulary(&vocab)?;

    let (hparams, tensors) = whisper_tensors(&model)?;
    // Check every tensor before writing anything.
    let types = tensors
        .iter()
        .map(|(name, t)| tensor_type(name, t, weights))
        .collect::<Result<Vec<_>, _>>()?;
    let filters = mel_filters(16000.0, 400, hparams[9] as usize);

    let file = std::fs::File::create(dst).map_err(|e| ConvertError::io(dst, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| ConvertError::io(dst, e);
    write_header(&mut w, &hparams, weights, &filters, &tokens).map_err(io)?;
    for ((name, t), ty) in tensors.iter().zip(types) {
        write_tensor(&mut w, name, t, ty).map_err(io)?;
    }
    w.flush().map_err(io)?;
    drop(w);
    let bytes = std::fs::metadata(dst).map_err(io)?.len();
    Ok(ConvertSummary {
        hparams,
        tensors: tensors.len(),
        tokens: tokens.len(),
        bytes,
    })
}

/// The regular BPE tokens (those before `<|endoftext|>`), byte-decoded.
pub fn decode_vocabulary(text: &str) -> Result<Vec<Vec<u8>>, ConvertError> {
    // Python's text mode reads "\r\n" and "\r" as "\n"; do the same.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let words: Vec<&str> = text.split('\n').collect();
    let eot = words
        .iter()
        .position(|w| *w == "<|endoftext|>")
        .ok_or_else(|| ConvertError::Format("vocabulary.txt has no <|endoftext|> token".into()))?;
    let table = bytes_to_unicode();
    let mut decoder = std::collections::HashMap::with_capacity(256);
    for (b, c) in table.iter().enumerate() {
        decoder.insert(*c, b as u8);
    }
    words[..eot]
        .iter()
        .map(|w| {
            w.chars()
                .map(|ch| {
                    decoder.get(&ch).copied().ok_or_else(|| {
                        ConvertError::Format(format!(
                            "vocabulary token {w:?} has unmapped char {ch:?}"
                        ))
                    })
                })
                .collect()
        })
        .collect()
}

fn layer_count(model: &Ct2Model, side: &str) -> Result<usize, ConvertError> {
    let prefix = format!("{side}/layer_");
    let max = model
        .names()
        .iter()
        .filter_map(|k| {
            let rest = k.strip_prefix(&prefix)?;
            let idx = rest.split('/').next()?;
            if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            idx.parse::<usize>().ok()
        })
        .max();
    max.map(|m| m + 1)
        .ok_or_else(|| ConvertError::MissingTensor(format!("{prefix}0/...")))
}

fn dim(t: &Tensor, axis: usize, name: &str) -> Result<usize, ConvertError> {
    t.dims
        .get(axis)
        .copied()
        .ok_or_else(|| ConvertError::Format(format!("{name} has shape {:?}", t.dims)))
}

fn to_i32(x: usize) -> Result<i32, ConvertError> {
    i32::try_from(x).map_err(|_| ConvertError::Format(format!("dimension {x} overflows i32")))
}

/// The hparams and OpenAI-named tensors, in the order whisper.cpp's converters write them.
#[allow(clippy::type_complexity)]
pub fn whisper_tensors(
    model: &Ct2Model,
) -> Result<([i32; 10], Vec<(String, Tensor)>), ConvertError> {
    let n_audio_layer = layer_count(model, "encoder")?;
    let n_text_layer = layer_count(model, "decoder")?;
    let emb = model.to_f32("decoder/embeddings/weight")?;
    let n_vocab = dim(&emb, 0, "decoder/embeddings/weight")?;
    let n_text_state = dim(&emb, 1, "decoder/embeddings/weight")?;
    let enc_pos = model.to_f32("encoder/position_encodings/encodings")?;
    let n_audio_ctx = dim(&enc_pos, 0, "encoder position encodings")?;
    let n_audio_state = dim(&enc_pos, 1, "encoder position encodings")?;
    let dec_pos = model.to_f32("decoder/position_encodings/encodings")?;
    let n_text_ctx = dim(&dec_pos, 0, "decoder position encodings")?;
    let n_audio_head = model.scalar("encoder/num_heads")?;
    let n_text_head = if model.get("decoder/num_heads").is_ok() {
        model.scalar("decoder/num_heads")?
    } else {
        n_audio_head
    };
    let conv1 = model.to_f32("encoder/conv1/weight")?;
    let n_mels = dim(&conv1, 1, "encoder/conv1/weight")?;
    let hparams = [
        to_i32(n_vocab)?,
        to_i32(n_audio_ctx)?,
        to_i32(n_audio_state)?,
        n_audio_head as i32,
        to_i32(n_audio_layer)?,
        to_i32(n_text_ctx)?,
        to_i32(n_text_state)?,
        n_text_head as i32,
        to_i32(n_text_layer)?,
        to_i32(n_mels)?,
    ];

    let mut t: Vec<(String, Tensor)> = Vec::new();
    let mut put = |name: String, tensor: Tensor| t.push((name, tensor));
    let get = |name: &str| model.to_f32(name);

    put("encoder.positional_embedding".into(), enc_pos);
    put("encoder.conv1.weight".into(), conv1);
    put("encoder.conv1.bias".into(), get("encoder/conv1/bias")?);
    put("encoder.conv2.weight".into(), get("encoder/conv2/weight")?);
    put("encoder.conv2.bias".into(), get("encoder/conv2/bias")?);

    // Self-attention with fused q/k/v and the feed-forward block, shared by both stacks.
    let self_attn_and_mlp = |put: &mut dyn FnMut(String, Tensor),
                             p: &str,
                             o: &str,
                             d: usize|
     -> Result<(), ConvertError> {
        let qkv_w = get(&format!("{p}/self_attention/linear_0/weight"))?;
        let qkv_b = get(&format!("{p}/self_attention/linear_0/bias"))?;
        put(format!("{o}.attn.query.weight"), qkv_w.rows(0, d)?);
        put(format!("{o}.attn.query.bias"), qkv_b.rows(0, d)?);
        put(format!("{o}.attn.key.weight"), qkv_w.rows(d, 2 * d)?);
        put(format!("{o}.attn.value.weight"), qkv_w.rows(2 * d, 3 * d)?);
        put(format!("{o}.attn.value.bias"), qkv_b.rows(2 * d, 3 * d)?);
        put(
            format!("{o}.attn.out.weight"),
            get(&format!("{p}/self_attention/linear_1/weight"))?,
        );
        put(
            format!("{o}.attn.out.bias"),
            get(&format!("{p}/self_attention/linear_1/bias"))?,
        );
        put(
            format!("{o}.attn_ln.weight"),
            get(&format!("{p}/self_attention/layer_norm/gamma"))?,
        );
        put(
            format!("{o}.attn_ln.bias"),
            get(&format!("{p}/self_attention/layer_norm/beta"))?,
        );
        Ok(())
    };
    let mlp = |put: &mut dyn FnMut(String, Tensor), p: &str, o: &str| -> Result<(), ConvertError> {
        put(
            format!("{o}.mlp.0.weight"),
            get(&format!("{p}/ffn/linear_0/weight"))?,
        );
        put(
            format!("{o}.mlp.0.bias"),
            get(&format!("{p}/ffn/linear_0/bias"))?,
        );
        put(
            format!("{o}.mlp.2.weight"),
            get(&format!("{p}/ffn/linear_1/weight"))?,
        );
        put(
            format!("{o}.mlp.2.bias"),
            get(&format!("{p}/ffn/linear_1/bias"))?,
        );
        put(
            format!("{o}.mlp_ln.weight"),
            get(&format!("{p}/ffn/layer_norm/gamma"))?,
        );
        put(
            format!("{o}.mlp_ln.bias"),
            get(&format!("{p}/ffn/layer_norm/beta"))?,
        );
        Ok(())
    };

    for i in 0..n_audio_layer {
        let (p, o) = (format!("encoder/layer_{i}"), format!("encoder.blocks.{i}"));
        self_attn_and_mlp(&mut put, &p, &o, n_audio_state)?;
        mlp(&mut put, &p, &o)?;
    }
    put(
        "encoder.ln_post.weight".into(),
        get("encoder/layer_norm/gamma")?,
    );
    put(
        "encoder.ln_post.bias".into(),
        get("encoder/layer_norm/beta")?,
    );

    put("decoder.positional_embedding".into(), dec_pos);
    put("decoder.token_embedding.weight".into(), emb);
    let d = n_text_state;
    for i in 0..n_text_layer {
        let (p, o) = (format!("decoder/layer_{i}"), format!("decoder.blocks.{i}"));
        self_attn_and_mlp(&mut put, &p, &o, d)?;
        put(
            format!("{o}.cross_attn.query.weight"),
            get(&format!("{p}/attention/linear_0/weight"))?,
        );
        put(
            format!("{o}.cross_attn.query.bias"),
            get(&format!("{p}/attention/linear_0/bias"))?,
        );
        let kv_w = get(&format!("{p}/attention/linear_1/weight"))?;
        let kv_b = get(&format!("{p}/attention/linear_1/bias"))?;
        put(format!("{o}.cross_attn.key.weight"), kv_w.rows(0, d)?);
        put(format!("{o}.cross_attn.value.weight"), kv_w.rows(d, 2 * d)?);
        put(format!("{o}.cross_attn.value.bias"), kv_b.rows(d, 2 * d)?);
        put(
            format!("{o}.cross_attn.out.weight"),
            get(&format!("{p}/attention/linear_2/weight"))?,
        );
        put(
            format!("{o}.cross_attn.out.bias"),
            get(&format!("{p}/attention/linear_2/bias"))?,
        );
        put(
            format!("{o}.cross_attn_ln.weight"),
            get(&format!("{p}/attention/layer_norm/gamma"))?,
        );
        put(
            format!("{o}.cross_attn_ln.bias"),
            get(&format!("{p}/attention/layer_norm/beta"))?,
        );
        mlp(&mut put, &p, &o)?;
    }
    put("decoder.ln.weight".into(), get("decoder/layer_norm/gamma")?);
    put("decoder.ln.bias".into(), get("decoder/layer_norm/beta")?);
    Ok((hparams, t))
}

fn write_header(
    w: &mut impl Write,
    hparams: &[i32; 10],
    weights: WeightType,
    filters: &[f32],
    tokens: &[Vec<u8>],
) -> std::io::Result<()> {
    w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for h in hparams {
        w.write_all(&h.to_le_bytes())?;
    }
    w.write_all(&weights.header_ftype().to_le_bytes())?;
    let n_mels = hparams[9];
    let n_fft = filters.len() as i32 / n_mels.max(1);
    w.write_all(&n_mels.to_le_bytes())?;
    w.write_all(&n_fft.to_le_bytes())?;
    for f in filters {
        w.write_all(&f.to_le_bytes())?;
    }
    w.write_all(&(tokens.len() as i32).to_le_bytes())?;
    for tok in tokens {
        w.write_all(&(tok.len() as i32).to_le_bytes())?;
        w.write_all(tok)?;
    }
    Ok(())
}

/// A tensor's dimensions in the file: the conv biases become (n, 1), as whisper.cpp expects.
fn file_dims(name: &str, t: &Tensor) -> Vec<usize> {
    if name == "encoder.conv1.bias" || name == "encoder.conv2.bias" {
        vec![t.data.len(), 1]
    } else {
        t.dims.clone()
    }
}

/// How one tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Biases, norms, positional embeddings.
    F32,
    Weights(WeightType),
}

impl Stored {
    fn ggml_type(self) -> whisper_rs_sys::ggml_type {
        match self {
            Stored::F32 => whisper_rs_sys::ggml_type_GGML_TYPE_F32,
            Stored::Weights(w) => w.ggml_type(),
        }
    }
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::F32 => f.write_str("f32"),
            Stored::Weights(w) => w.fmt(f),
        }
    }
}

/// The type whisper.cpp expects `name` in, in a file whose big matrices are `weights`.
fn tensor_type(name: &str, t: &Tensor, weights: WeightType) -> Result<Stored, ConvertError> {
    let dims = file_dims(name, t);
    let small = dims.len() < 2
        || matches!(
            name,
            "encoder.conv1.bias"
                | "encoder.conv2.bias"
                | "encoder.positional_embedding"
                | "decoder.positional_embedding"
        );
    let ty = if small {
        Stored::F32
    } else if dims.len() == 3 {
        // The convolution kernels: whisper.cpp's "vtype" (f16 in every file but an all-f32 one,
        // which whisper.cpp 1.8.3's convolution cannot run, so it is not offered).
        Stored::Weights(WeightType::F16)
    } else {
        Stored::Weights(weights)
    };
    let row = dims.last().copied().unwrap_or(0);
    // SAFETY: plain lookup in ggml's static type table.
    let block = unsafe { whisper_rs_sys::ggml_blck_size(ty.ggml_type()) } as usize;
    if block > 1 && row % block != 0 {
        return Err(ConvertError::Format(format!(
            "{name}: rows of {row} values cannot be stored as {ty} (blocks of {block})"
        )));
    }
    Ok(ty)
}

/// `data` (rows of `row` values) in ggml's layout for `ty`.
fn encode(data: &[f32], row: usize, ty: Stored) -> Vec<u8> {
    let Stored::Weights(ty) = ty else {
        return data.iter().flat_map(|x| x.to_le_bytes()).collect();
    };
    match ty {
        WeightType::F16 => data
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        WeightType::Q8_0 | WeightType::Q5_0 | WeightType::Q5_1 => {
            let rows = data.len() / row;
            let gt = ty.ggml_type();
            // SAFETY: plain lookups in ggml's static type table.
            let row_bytes = unsafe { whisper_rs_sys::ggml_row_size(gt, row as i64) };
            let mut out = vec![0u8; rows * row_bytes];
            // SAFETY: `data` holds rows x row floats and `out` rows x row_bytes bytes, as
            // ggml_quantize_chunk reads and writes; these types need no importance matrix
            // (null) and no global init beyond what ggml_quantize_init does.
            let written = unsafe {
                whisper_rs_sys::ggml_quantize_init(gt);
                whisper_rs_sys::ggml_quantize_chunk(
                    gt,
                    data.as_ptr(),
                    out.as_mut_ptr().cast(),
                    0,
                    rows as i64,
                    row as i64,
                    std::ptr::null(),
                )
            };
            debug_assert_eq!(written, out.len());
            out
        }
    }
}

fn write_tensor(w: &mut impl Write, name: &str, t: &Tensor, ty: Stored) -> std::io::Result<()> {
    let dims = file_dims(name, t);
    let nb = name.as_bytes();
    w.write_all(&(dims.len() as i32).to_le_bytes())?;
    w.write_all(&(nb.len() as i32).to_le_bytes())?;
    w.write_all(&(ty.ggml_type() as i32).to_le_bytes())?;
    for d in dims.iter().rev() {
        w.write_all(&(*d as i32).to_le_bytes())?;
    }
    w.write_all(nb)?;
    w.write_all(&encode(
        &t.data,
        dims.last().copied().unwrap_or(1).max(1),
        ty,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_stops_at_endoftext_and_decodes_bytes() {
        let toks = decode_vocabulary("!\nĠthe\nĊ\n<|endoftext|>\n<|startoftranscript|>").unwrap();
        assert_eq!(toks, vec![b"!".to_vec(), b" the".to_vec(), b"\n".to_vec()]);
        assert!(decode_vocabulary("a\nb").is_err());
    }

    #[test]
    fn conv_bias_is_two_dimensional_f32() {
        let mut out = Vec::new();
        let t = Tensor {
            dims: vec![2],
            data: vec![1.0, 2.0],
        };
        let ty = tensor_type("encoder.conv1.bias", &t, WeightType::Q8_0).unwrap();
        assert_eq!(ty, Stored::F32);
        write_tensor(&mut out, "encoder.conv1.bias", &t, ty).unwrap();
        let ints: Vec<i32> = out[..20]
            .chunks(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(ints, [2, 18, 0, 1, 2]);
        assert_eq!(out.len(), 20 + 18 + 8);
    }

    #[test]
    fn q8_0_blocks_hold_the_values_to_within_half_a_step() {
        // Two rows of 64: two blocks each of one f16 scale and 32 signed bytes.
        let data: Vec<f32> = (0..128).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let bytes = encode(&data, 64, Stored::Weights(WeightType::Q8_0));
        assert_eq!(bytes.len(), 4 * 34);
        for (b, block) in bytes.chunks(34).enumerate() {
            let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            let values = &data[b * 32..(b + 1) * 32];
            let amax = values.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!((d - amax / 127.0).abs() < 1e-3, "scale {d} for max {amax}");
            for (q, x) in block[2..].iter().zip(values) {
                let back = f32::from(*q as i8) * d;
                assert!(
                    (back - x).abs() <= d / 2.0 + 1e-3,
                    "{x} came back as {back}"
                );
            }
        }
    }

    #[test]
    fn quantized_types_use_ggml_block_sizes_and_header_versions() {
        let row: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let q5_0 = encode(&row, 64, Stored::Weights(WeightType::Q5_0));
        let q5_1 = encode(&row, 64, Stored::Weights(WeightType::Q5_1));
        assert_eq!((q5_0.len(), q5_1.len()), (2 * 22, 2 * 24));
        assert_eq!(WeightType::F16.header_ftype(), 1);
        assert_eq!(WeightType::Q8_0.header_ftype(), 2007);
        assert_eq!(WeightType::Q5_0.header_ftype(), 2008);
        assert_eq!(WeightType::Q5_1.header_ftype(), 2009);
        assert_eq!("Q8_0".parse::<WeightType>().unwrap(), WeightType::Q8_0);
        let err = "f32".parse::<WeightType>().unwrap_err();
        assert!(err.contains("f16, q8_0, q5_0, q5_1"), "{err}");
    }

    #[test]
    fn rows_that_do_not_fill_blocks_are_refused_before_writing() {
        let t = Tensor {
            dims: vec![2, 48],
            data: vec![0.0; 96],
        };
        let name = "decoder.blocks.0.mlp.0.weight";
        assert_eq!(
            tensor_type(name, &t, WeightType::F16).unwrap(),
            Stored::Weights(WeightType::F16)
        );
        let err = tensor_type(name, &t, WeightType::Q8_0).unwrap_err();
        assert!(err.to_string().contains("rows of 48 values"), "{err}");
        // The convolution kernels stay f16 whatever the matrices are.
        let conv = Tensor {
            dims: vec![4, 2, 3],
            data: vec![0.0; 24],
        };
        assert_eq!(
            tensor_type("encoder.conv1.weight", &conv, WeightType::Q5_0).unwrap(),
            Stored::Weights(WeightType::F16)
        );
    }
}
