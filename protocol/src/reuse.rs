//! Result keys: what a job's result depends on, so that a job whose key matches a completed
//! job's can take that result instead of running again.
//!
//! The agent knows what its results depend on (its models, its settings, which job options
//! change the output and their defaults) and says so in its registration as a
//! [`ResultProfile`]. The hub knows the job (input hash, content type, options). [`result_key`]
//! puts the two together; hub and agent use this one function, so they cannot disagree.
//!
//! Options a profile does not list (priority, deadline, queue, unknown names) are not part of
//! the key: they do not change the output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How an option's value is written in a key (so that `yes` and `true` give one key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueKind {
    /// true or false (`1`, `yes`, `on`, `0`, `no`, `off` ...).
    Switch,
    /// A whole number.
    Count,
    /// A language code; empty and `auto` mean "detect".
    Language,
    /// Free text, trimmed.
    Text,
}

impl ValueKind {
    /// The value as it is written in a key; `None` when it is not a value of this kind (the
    /// job will fail at the agent, and a failed job is never reused).
    pub fn canonical(self, value: &str) -> Option<String> {
        let v = value.trim();
        match self {
            ValueKind::Switch => match v.to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => Some("true".into()),
                "0" | "false" | "no" | "off" => Some("false".into()),
                _ => None,
            },
            ValueKind::Count => v.parse::<u64>().ok().map(|n| n.to_string()),
            ValueKind::Language => {
                let l = v.to_ascii_lowercase();
                Some(if l.is_empty() { "auto".into() } else { l })
            }
            ValueKind::Text => Some(v.to_string()),
        }
    }
}

/// One job option that changes a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionRule {
    /// The option's name in keys.
    pub name: String,
    /// Other names a submitter may use for it.
    pub aliases: Vec<String>,
    pub kind: ValueKind,
    /// The agent's value when a job does not set it (canonical); `None`: unset is its own value.
    pub default: Option<String>,
}

/// What the results of one content type depend on at an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindProfile {
    /// Settings of the agent that are part of every result: model files by hash
    /// (`whisper_model` -> BLAKE3), fixed settings (`jpeg_quality` -> `85`).
    pub fixed: BTreeMap<String, String>,
    /// The job options that change the result.
    pub options: Vec<OptionRule>,
}

/// Everything an agent's results depend on besides the job itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultProfile {
    /// Bumped whenever a change to the agent changes what it produces.
    pub processing_version: u32,
    /// By content type (`audio`, `video`, `image`).
    pub kinds: BTreeMap<String, KindProfile>,
}

/// The key of a job's result at an agent with `profile`: BLAKE3 (hex) over the input's hash,
/// the content type, the processing version, the content type's fixed settings and each listed
/// option's value (the job's, else the agent's default). `None` when the profile does not
/// cover the content type or an option's value is not one of its kind.
pub fn result_key(
    profile: &ResultProfile,
    input_hash: &str,
    content_type: &str,
    options: &BTreeMap<String, String>,
) -> Option<String> {
    let kind = profile.kinds.get(content_type)?;
    let mut h = blake3::Hasher::new();
    let mut field = |name: &str, value: &str| {
        // Length-prefixed, so no two different lists hash alike.
        for part in [name, value] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    };
    field("key", "morag-result-key/1");
    field("input", &input_hash.to_ascii_lowercase());
    field("content_type", content_type);
    field(
        "processing_version",
        &profile.processing_version.to_string(),
    );
    for (name, value) in &kind.fixed {
        field(&format!("fixed.{name}"), value);
    }
    let mut rules: Vec<&OptionRule> = kind.options.iter().collect();
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    for rule in rules {
        // One option under two of its names: the agent refuses the job (no key, no reuse).
        let mut given = std::iter::once(&rule.name)
            .chain(&rule.aliases)
            .filter_map(|n| options.get(n));
        let (first, again) = (given.next(), given.next());
        if again.is_some() {
            return None;
        }
        let given = first;
        let value = match given {
            Some(v) => Some(rule.kind.canonical(v)?),
            None => rule.default.clone(),
        };
        field(
            &format!("option.{}", rule.name),
            value.as_deref().unwrap_or("\u{0}unset"),
        );
    }
    Some(h.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> ResultProfile {
        ResultProfile {
            processing_version: 1,
            kinds: BTreeMap::from([(
                "audio".to_string(),
                KindProfile {
                    fixed: BTreeMap::from([("whisper_model".to_string(), "ab".repeat(32))]),
                    options: vec![
                        OptionRule {
                            name: "language".into(),
                            aliases: vec![],
                            kind: ValueKind::Language,
                            default: Some("auto".into()),
                        },
                        OptionRule {
                            name: "enable_diarization".into(),
                            aliases: vec!["diarization".into()],
                            kind: ValueKind::Switch,
                            default: Some("true".into()),
                        },
                        OptionRule {
                            name: "num_speakers".into(),
                            aliases: vec![],
                            kind: ValueKind::Count,
                            default: None,
                        },
                    ],
                },
            )]),
        }
    }

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_spellings_and_unlisted_options_do_not_change_the_key() {
        let p = profile();
        let key = |o: &[(&str, &str)]| result_key(&p, &"cd".repeat(32), "audio", &opts(o));
        let base = key(&[]).unwrap();
        assert_eq!(key(&[("enable_diarization", "yes")]).unwrap(), base);
        assert_eq!(key(&[("diarization", "1")]).unwrap(), base);
        assert_eq!(key(&[("language", "")]).unwrap(), base);
        assert_eq!(
            key(&[("priority", "high"), ("colour", "red")]).unwrap(),
            base
        );
        assert_ne!(key(&[("diarization", "off")]).unwrap(), base);
        assert_ne!(key(&[("language", "de")]).unwrap(), base);
        assert_ne!(key(&[("num_speakers", "2")]).unwrap(), base);
        assert_eq!(key(&[("diarization", "perhaps")]), None);
        assert_eq!(
            key(&[("diarization", "on"), ("enable_diarization", "off")]),
            None,
            "one option under two names"
        );
    }

    #[test]
    fn the_input_the_type_the_models_and_the_version_change_the_key() {
        let p = profile();
        let none = BTreeMap::new();
        let base = result_key(&p, &"cd".repeat(32), "audio", &none).unwrap();
        assert_ne!(
            result_key(&p, &"ce".repeat(32), "audio", &none).unwrap(),
            base
        );
        assert_eq!(result_key(&p, &"cd".repeat(32), "video", &none), None);
        let mut newer = p.clone();
        newer.processing_version = 2;
        assert_ne!(
            result_key(&newer, &"cd".repeat(32), "audio", &none).unwrap(),
            base
        );
        let mut other_model = p.clone();
        other_model
            .kinds
            .get_mut("audio")
            .unwrap()
            .fixed
            .insert("whisper_model".into(), "ef".repeat(32));
        assert_ne!(
            result_key(&other_model, &"cd".repeat(32), "audio", &none).unwrap(),
            base
        );
    }
}
