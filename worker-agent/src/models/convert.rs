//! CTranslate2 Whisper model -> whisper.cpp ggml file.
//!
//! # Output layout (little-endian i32 unless noted)
//!
//! ```text
//! magic 0x67676d6c ("ggml")
//! hparams: n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer
//!          n_text_ctx n_text_state n_text_head n_text_layer n_mels
//! ftype 1 (f16 weights)
//! mel filters: n_mel, n_fft, then n_mel * n_fft f32
//! vocabulary: count, then per token: length, bytes (regular BPE tokens before <|endoftext|>)
//! tensors: n_dims, name length, ftype (0 f32 / 1 f16), dims innermost first, name, data
//! ```
//!
//! Tensors carry OpenAI's state-dict names. CTranslate2 fuses the self-attention q/k/v
//! projections (and the cross-attention k/v) into one matrix: they are split here, and the
//! key bias, which Whisper does not have, is dropped. 2-D and 3-D weights are stored as f16,
//! biases, norms and positional embeddings as f32.

use std::io::Write;
use std::path::Path;

use super::ct2::{Ct2Model, Tensor};
use super::mel::{bytes_to_unicode, mel_filters};
use super::ConvertError;

/// ggml's file magic.
pub const GGML_MAGIC: i32 = 0x6767_6d6c;
/// Longest vocabulary file accepted.
pub const MAX_VOCAB_BYTES: u64 = 64 << 20;

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
pub fn convert_ct2_dir(src: &Path, dst: &Path) -> Result<ConvertSummary, ConvertError> {
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
    let filters = mel_filters(16000.0, 400, hparams[9] as usize);

    let file = std::fs::File::create(dst).map_err(|e| ConvertError::io(dst, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| ConvertError::io(dst, e);
    write_header(&mut w, &hparams, &filters, &tokens).map_err(io)?;
    for (name, t) in &tensors {
        write_tensor(&mut w, name, t).map_err(io)?;
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
    filters: &[f32],
    tokens: &[Vec<u8>],
) -> std::io::Result<()> {
    w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for h in hparams {
        w.write_all(&h.to_le_bytes())?;
    }
    w.write_all(&1i32.to_le_bytes())?; // ftype: f16
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

/// Whether a tensor is stored as f32 (else f16).
fn stored_as_f32(name: &str, n_dims: usize) -> bool {
    n_dims < 2
        || matches!(
            name,
            "encoder.conv1.bias"
                | "encoder.conv2.bias"
                | "encoder.positional_embedding"
                | "decoder.positional_embedding"
        )
}

fn write_tensor(w: &mut impl Write, name: &str, t: &Tensor) -> std::io::Result<()> {
    let mut dims = t.dims.clone();
    if name == "encoder.conv1.bias" || name == "encoder.conv2.bias" {
        // whisper.cpp expects the conv biases as (n, 1).
        dims = vec![t.data.len(), 1];
    }
    let f32_out = stored_as_f32(name, dims.len());
    let nb = name.as_bytes();
    w.write_all(&(dims.len() as i32).to_le_bytes())?;
    w.write_all(&(nb.len() as i32).to_le_bytes())?;
    w.write_all(&(if f32_out { 0i32 } else { 1i32 }).to_le_bytes())?;
    for d in dims.iter().rev() {
        w.write_all(&(*d as i32).to_le_bytes())?;
    }
    w.write_all(nb)?;
    let mut buf = Vec::with_capacity(t.data.len() * if f32_out { 4 } else { 2 });
    for &x in &t.data {
        if f32_out {
            buf.extend_from_slice(&x.to_le_bytes());
        } else {
            buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
        }
    }
    w.write_all(&buf)
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
        write_tensor(&mut out, "encoder.conv1.bias", &t).unwrap();
        let ints: Vec<i32> = out[..20]
            .chunks(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(ints, [2, 18, 0, 1, 2]);
        assert_eq!(out.len(), 20 + 18 + 8);
    }
}
