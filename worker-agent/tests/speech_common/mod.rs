//! Conversations made from espeak-ng voices with known turns, and the speech model fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use morag_agent::media::decode::decode_audio;
use morag_agent::media::{Cancel, MediaKind};
use morag_agent::speech::Turn;

use crate::audio_common;

/// The models directory with the diarization and topic models (set up on demand).
pub fn speech_models_dir() -> Result<PathBuf, String> {
    for f in [
        "libonnxruntime.so",
        "segmentation-3.0.onnx",
        "ge2e-speaker-encoder.safetensors",
        "all-minilm-l6-v2-int8.onnx",
        "all-minilm-l6-v2-tokenizer.json",
    ] {
        audio_common::models_file(f)?;
    }
    Ok(audio_common::repo_root().join("models"))
}

/// The original GE2E checkpoint (for the converter's reference test).
pub fn checkpoint() -> Result<PathBuf, String> {
    audio_common::models_file("resemblyzer-pretrained.pt")
}

/// An espeak-ng voice: name, pitch (0-99), words per minute.
pub type Voice = (&'static str, u32, u32);

/// Voices that differ: a low male US voice, a high female voice, a whispering voice. GE2E
/// similarities between two sentences of each (`cargo bench -p morag-agent --bench speech --
/// --voices`): 0.91-0.94 for the same voice, 0.53-0.69 between these three.
/// Closer pairs exist among espeak-ng's male voices (en-us at pitch 30 and
/// en-gb-scotland+m7: 0.77-0.79; the segmentation model also merges those within a window).
pub const VOICES: [Voice; 3] = [
    ("en-us", 30, 160),
    ("en+f3", 75, 170),
    ("en+whisper", 50, 150),
];

/// Turns of 2-8 s, two speakers.
pub const TWO_SPEAKER_TURNS: &[(usize, &str)] = &[
    (0, "Good morning, thanks for joining the call today."),
    (1, "Happy to be here. I read the report you sent over last night, and I have a few questions about the numbers in the second section."),
    (0, "Of course, go ahead."),
    (1, "The shipping costs went up by almost a third. Was that the fuel prices, or did we change carriers?"),
    (0, "Mostly fuel. We also added a second warehouse in the north, which costs more for the first year."),
    (1, "That makes sense. Will it pay for itself?"),
    (0, "We expect delivery times to drop by two days, and the sales team thinks that brings in new customers by spring."),
    (1, "Good. Send me the forecast when it is ready, and let us meet again next week."),
];

/// Turns of 2-8 s, three speakers.
pub const THREE_SPEAKER_TURNS: &[(usize, &str)] = &[
    (0, "Welcome everyone, let us start with the garden project."),
    (1, "We planted the tomatoes last weekend, and the beans are already coming up along the fence."),
    (2, "I fixed the water pipe near the shed, so the hose reaches the back beds now."),
    (0, "Great work. What about the compost?"),
    (1, "It needs turning every week. I can do it on Saturdays if someone covers Sundays."),
    (2, "I will take Sundays. I also want to build a second bin before the autumn leaves fall."),
    (0, "Good idea. Let us buy the wood together on Friday."),
    (2, "Friday works for me, I will bring the truck."),
    (1, "Then I will bring coffee and the old tools from my garage."),
];

/// A reader on astronomy, then one on baking.
pub const ASTRONOMY: &[&str] = &[
    "The planets of our solar system orbit the sun on nearly flat paths.",
    "Jupiter is the largest planet, and its great red spot is a storm older than three centuries.",
    "Astronomers measure the distance to nearby stars with parallax, watching them shift as the earth moves.",
    "A telescope gathers light with a mirror or a lens, and a larger aperture shows fainter galaxies.",
    "The moon has no atmosphere, so its craters stay sharp for billions of years.",
    "Comets are balls of ice and dust that grow bright tails when they come close to the sun.",
];
pub const BAKING: &[&str] = &[
    "To bake bread, mix flour, water, salt and yeast into a soft dough.",
    "Knead the dough for ten minutes until it feels smooth and springs back when pressed.",
    "Let it rise in a warm kitchen until it doubles in size, usually about an hour.",
    "Shape the loaf, dust it with flour, and cut a shallow line across the top.",
    "Bake it in a hot oven until the crust is brown and the bottom sounds hollow.",
    "Cool the bread on a rack before slicing, or the crumb turns gummy.",
];

/// A made conversation: samples at 16 kHz, the reference turns, and when each sentence starts.
pub struct Conversation {
    pub samples: Vec<f32>,
    pub reference: Vec<Turn>,
    pub sentence_starts: Vec<f64>,
}

/// 16 kHz mono samples of any audio file.
pub fn load_16k(path: &Path) -> Vec<f32> {
    decode_audio(path, MediaKind::Audio, &Cancel::new())
        .unwrap()
        .samples
}

/// Speak `text` with `voice`, trimmed of leading and trailing silence.
fn say(voice: Voice, text: &str, dir: &Path, i: usize) -> Result<Vec<f32>, String> {
    let wav = dir.join(format!("turn{i}.wav"));
    let out = Command::new("espeak-ng")
        .args([
            "-v",
            voice.0,
            "-p",
            &voice.1.to_string(),
            "-s",
            &voice.2.to_string(),
            "-w",
        ])
        .arg(&wav)
        .arg(text)
        .output()
        .map_err(|e| format!("espeak-ng: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "espeak-ng failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let s = load_16k(&wav);
    let loud = |x: &f32| x.abs() > 0.01;
    let a = s.iter().position(loud).ok_or("espeak-ng made silence")?;
    let b = s.len() - s.iter().rev().position(loud).unwrap_or(0);
    Ok(s[a..b].to_vec())
}

/// Speak `turns` ((speaker, text)) with `voices`, 0.4-0.7 s apart, 0.5 s of silence around.
pub fn conversation(voices: &[Voice], turns: &[(usize, &str)]) -> Result<Conversation, String> {
    conversation_with_gaps(voices, turns, |i| 6_400 + (i % 4) * 1_600)
}

/// The same with `gap(i)` samples of silence after turn `i`.
pub fn conversation_with_gaps(
    voices: &[Voice],
    turns: &[(usize, &str)],
    gap: impl Fn(usize) -> usize,
) -> Result<Conversation, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut samples = vec![0f32; 8_000];
    let mut reference = Vec::new();
    let mut sentence_starts = Vec::new();
    for (i, (spk, text)) in turns.iter().enumerate() {
        let speech = say(voices[*spk], text, tmp.path(), i)?;
        let start = samples.len() as f64 / 16_000.0;
        sentence_starts.push(start);
        samples.extend_from_slice(&speech);
        reference.push(Turn {
            start,
            end: samples.len() as f64 / 16_000.0,
            speaker: *spk,
        });
        samples.extend(std::iter::repeat_n(0f32, gap(i)));
    }
    samples.extend(std::iter::repeat_n(0f32, 1_600));
    Ok(Conversation {
        samples,
        reference,
        sentence_starts,
    })
}

/// Write 16 kHz mono 16-bit PCM.
pub fn write_wav(path: &Path, samples: &[f32]) {
    let data: Vec<u8> = samples
        .iter()
        .flat_map(|x| ((x.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect();
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}
