//! The real-speech evaluation set (scripts/setup-eval-set.sh puts it in models/eval/; where
//! each recording comes from is in tests/data/README.md).
#![allow(dead_code)]

use std::path::PathBuf;

use morag_agent::speech::diarize::parse_rttm;
use morag_agent::speech::Turn;

use crate::audio_common;

/// One recording of the set.
#[derive(Debug, Clone)]
pub struct EvalFile {
    pub name: String,
    /// telephone, meeting, interview, read, speech.
    pub kind: String,
    /// Kept out of all tuning (reported once).
    pub kept_out: bool,
    /// People speaking, from the reference.
    pub speakers: usize,
    pub wav: PathBuf,
    /// Who spoke when, where known.
    pub turns: Option<Vec<Turn>>,
    /// The words spoken, where known.
    pub text: Option<String>,
}

/// The set, or why it is not there.
pub fn eval_set() -> Result<Vec<EvalFile>, String> {
    let dir = audio_common::repo_root().join("models/eval");
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).map_err(|e| {
        format!(
            "{}/manifest.tsv: {e} (run scripts/setup-eval-set.sh)",
            dir.display()
        )
    })?;
    let mut out = Vec::new();
    for line in manifest.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, kind, role, speakers] = f[..] else {
            return Err(format!("bad manifest line {line:?}"));
        };
        let rttm = dir.join(format!("{name}.rttm"));
        let turns = match std::fs::read_to_string(&rttm) {
            Ok(t) => Some(parse_rttm(&t)?),
            Err(_) => None,
        };
        out.push(EvalFile {
            name: name.to_string(),
            kind: kind.to_string(),
            kept_out: role == "kept-out",
            speakers: speakers
                .parse()
                .map_err(|_| format!("bad count in {line:?}"))?,
            wav: dir.join(format!("{name}.wav")),
            turns,
            text: std::fs::read_to_string(dir.join(format!("{name}.txt"))).ok(),
        });
    }
    Ok(out)
}

/// One recording by name.
pub fn eval_file(name: &str) -> Result<EvalFile, String> {
    eval_set()?
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("{name} is not in models/eval/manifest.tsv"))
}
