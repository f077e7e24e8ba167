//! What each part of a transcript is about: sentence embeddings of the transcript's segments
//! (all-MiniLM-L6-v2, mean-pooled and L2-normalised), TextTiling-style boundaries where the
//! similarity of the blocks either side of a gap drops deepest, at least [`MIN_TOPIC_SEGMENTS`]
//! segments per topic, and a label of each topic's most distinctive words.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use ndarray::Array2;
use ort::value::TensorRef;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::ge2e::{cosine, normalised};
use super::onnx::OnnxModel;
use crate::cancel::Cancel;

/// Segments on each side of a gap whose mean embeddings are compared.
const BLOCK: usize = 3;
/// Fewest segments in a topic.
pub const MIN_TOPIC_SEGMENTS: usize = 3;
/// A boundary needs at least this depth (cosine similarity, summed over both sides).
const MIN_DEPTH: f32 = 0.12;
/// Sentences per model run.
const BATCH: usize = 16;
/// Tokens per sentence (the model was tuned on 128-token inputs).
const MAX_TOKENS: usize = 128;
/// Words in a label.
const LABEL_WORDS: usize = 3;

/// The loaded model.
pub struct TopicSegmenter {
    model: OnnxModel,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for TopicSegmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicSegmenter")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// One topic: a run of segments.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    /// First and one-past-last segment index.
    pub start: usize,
    pub end: usize,
    pub label: String,
}

impl TopicSegmenter {
    pub fn new(model: OnnxModel, tokenizer_json: &Path) -> Result<Self, String> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| format!("cannot load {}: {e}", tokenizer_json.display()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| format!("tokenizer: {e}"))?;
        Ok(Self { model, tokenizer })
    }

    /// Unit-length sentence embeddings of `texts`.
    pub fn embed(&self, texts: &[&str], cancel: &Cancel) -> Result<Vec<Vec<f32>>, String> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            if cancel.is_cancelled() {
                return Err("cancelled".into());
            }
            let enc = self
                .tokenizer
                .encode_batch(chunk.to_vec(), true)
                .map_err(|e| format!("tokenizing: {e}"))?;
            let b = enc.len();
            let len = enc.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
            let mut ids = Array2::<i64>::zeros((b, len));
            let mut mask = Array2::<i64>::zeros((b, len));
            let types = Array2::<i64>::zeros((b, len));
            for (i, e) in enc.iter().enumerate() {
                for (j, (&id, &m)) in e.get_ids().iter().zip(e.get_attention_mask()).enumerate() {
                    ids[[i, j]] = id as i64;
                    mask[[i, j]] = m as i64;
                }
            }
            let pooled = self.model.with(|session| {
                let err = |e: ort::Error| e.to_string();
                let outputs = session
                    .run(ort::inputs![
                        "input_ids" => TensorRef::from_array_view(&ids).map_err(err)?,
                        "attention_mask" => TensorRef::from_array_view(&mask).map_err(err)?,
                        "token_type_ids" => TensorRef::from_array_view(&types).map_err(err)?,
                    ])
                    .map_err(|e| format!("sentence embedding failed: {e}"))?;
                let hidden = outputs[0]
                    .try_extract_array::<f32>()
                    .map_err(|e| format!("sentence embedding output: {e}"))?;
                if hidden.ndim() != 3 || hidden.shape()[0] != b || hidden.shape()[1] != len {
                    return Err(format!(
                        "sentence embedding output has shape {:?}",
                        hidden.shape()
                    ));
                }
                let dim = hidden.shape()[2];
                Ok((0..b)
                    .map(|i| {
                        let mut v = vec![0f32; dim];
                        let mut n = 0f32;
                        for j in 0..len {
                            if mask[[i, j]] == 1 {
                                n += 1.0;
                                for (k, x) in v.iter_mut().enumerate() {
                                    *x += hidden[[i, j, k]];
                                }
                            }
                        }
                        v.iter_mut().for_each(|x| *x /= n.max(1.0));
                        normalised(v)
                    })
                    .collect::<Vec<_>>())
            })?;
            out.extend(pooled);
        }
        Ok(out)
    }

    /// The topics of a transcript given as its segments' texts, in order.
    pub fn segment(&self, texts: &[&str], cancel: &Cancel) -> Result<Vec<Topic>, String> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let embeddings = self.embed(texts, cancel)?;
        let cuts = boundaries(&embeddings, MIN_TOPIC_SEGMENTS);
        Ok(topics_from_cuts(texts, &cuts))
    }
}

/// Segment indices where a new topic starts (sorted), from the embeddings of the segments.
pub fn boundaries(embeddings: &[Vec<f32>], min_len: usize) -> Vec<usize> {
    let n = embeddings.len();
    if n < 2 * min_len.max(1) {
        return Vec::new();
    }
    let mean = |range: std::ops::Range<usize>| {
        let vs: Vec<Vec<f32>> = embeddings[range].to_vec();
        super::ge2e::mean_normalised(&vs)
    };
    // Similarity across each gap g (between segment g-1 and g).
    let sims: Vec<f32> = (1..n)
        .map(|g| {
            let left = mean(g.saturating_sub(BLOCK)..g);
            let right = mean(g..(g + BLOCK).min(n));
            cosine(&left, &right)
        })
        .collect();
    // Depth: how far the similarity dips below the peaks on either side.
    let depth: Vec<f32> = (0..sims.len())
        .map(|i| {
            let mut lp = sims[i];
            for j in (0..i).rev() {
                if sims[j] < lp {
                    break;
                }
                lp = sims[j];
            }
            let mut rp = sims[i];
            for &s in &sims[i + 1..] {
                if s < rp {
                    break;
                }
                rp = s;
            }
            (lp - sims[i]) + (rp - sims[i])
        })
        .collect();
    let avg = depth.iter().sum::<f32>() / depth.len() as f32;
    let sd = (depth.iter().map(|d| (d - avg).powi(2)).sum::<f32>() / depth.len() as f32).sqrt();
    let cutoff = (avg + sd / 2.0).max(MIN_DEPTH);
    let mut order: Vec<usize> = (0..depth.len()).filter(|&i| depth[i] >= cutoff).collect();
    order.sort_by(|&a, &b| depth[b].total_cmp(&depth[a]));
    let mut cuts: Vec<usize> = Vec::new();
    for i in order {
        let g = i + 1;
        let fits =
            g >= min_len && n - g >= min_len && cuts.iter().all(|&c| c.abs_diff(g) >= min_len);
        if fits {
            cuts.push(g);
        }
    }
    cuts.sort_unstable();
    cuts
}

/// Topics between the cuts, each labelled with its most distinctive words.
pub fn topics_from_cuts(texts: &[&str], cuts: &[usize]) -> Vec<Topic> {
    let mut edges = vec![0];
    edges.extend_from_slice(cuts);
    edges.push(texts.len());
    let spans: Vec<(usize, usize)> = edges.windows(2).map(|w| (w[0], w[1])).collect();
    let counts: Vec<BTreeMap<String, (usize, usize)>> = spans
        .iter()
        .map(|&(a, b)| {
            let mut m: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            let mut pos = 0usize;
            for t in &texts[a..b] {
                for w in content_words(t) {
                    let e = m.entry(w).or_insert((0, pos));
                    e.0 += 1;
                    pos += 1;
                }
            }
            m
        })
        .collect();
    let n_topics = spans.len() as f64;
    spans
        .iter()
        .zip(&counts)
        .map(|(&(start, end), words)| {
            let mut scored: Vec<(f64, usize, &str)> = words
                .iter()
                .map(|(w, &(count, first))| {
                    let df = counts.iter().filter(|c| c.contains_key(w)).count() as f64;
                    let score = count as f64 * (1.0 + (n_topics / df).ln());
                    (score, first, w.as_str())
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let label = scored
                .iter()
                .take(LABEL_WORDS)
                .map(|x| x.2)
                .collect::<Vec<_>>()
                .join(", ");
            Topic { start, end, label }
        })
        .collect()
}

/// Lower-case words of three letters or more that are not function words.
fn content_words(text: &str) -> Vec<String> {
    let stop: HashSet<&str> = STOP_WORDS.iter().copied().collect();
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| w.chars().count() >= 3 && w.chars().all(char::is_alphabetic))
        .filter(|w| !stop.contains(w.as_str()))
        .collect()
}

/// English function words and fillers left out of labels.
const STOP_WORDS: &[&str] = &[
    "the",
    "and",
    "for",
    "are",
    "but",
    "not",
    "you",
    "all",
    "any",
    "can",
    "had",
    "her",
    "was",
    "one",
    "our",
    "out",
    "day",
    "get",
    "has",
    "him",
    "his",
    "how",
    "man",
    "new",
    "now",
    "old",
    "see",
    "two",
    "way",
    "who",
    "boy",
    "did",
    "its",
    "let",
    "put",
    "say",
    "she",
    "too",
    "use",
    "that",
    "with",
    "have",
    "this",
    "will",
    "your",
    "from",
    "they",
    "know",
    "want",
    "been",
    "good",
    "much",
    "some",
    "time",
    "very",
    "when",
    "come",
    "here",
    "just",
    "like",
    "long",
    "make",
    "many",
    "more",
    "only",
    "over",
    "such",
    "take",
    "than",
    "them",
    "well",
    "were",
    "what",
    "there",
    "their",
    "which",
    "would",
    "about",
    "could",
    "other",
    "these",
    "those",
    "then",
    "into",
    "also",
    "each",
    "most",
    "even",
    "because",
    "while",
    "where",
    "after",
    "before",
    "being",
    "should",
    "through",
    "very",
    "yes",
    "yeah",
    "okay",
    "really",
    "thing",
    "things",
    "going",
    "think",
    "said",
    "says",
    "does",
    "doing",
    "done",
    "both",
    "every",
    "again",
    "still",
    "under",
    "upon",
    "whom",
    "whose",
    "why",
    "may",
    "might",
    "must",
    "shall",
    "own",
    "same",
    "so",
    "than",
    "too",
    "off",
    "once",
    "few",
    "further",
    "against",
    "between",
    "during",
    "without",
    "within",
    "around",
    "among",
    "ask",
    "asked",
    "let's",
    "gets",
    "got",
    "make",
    "made",
    "one",
    "first",
    "second",
    "third",
    "people",
    "something",
    "anything",
    "everything",
    "nothing",
    "lot",
    "lots",
    "kind",
    "sort",
    "part",
    "parts",
    "uses",
    "used",
    "until",
    "unless",
    "usually",
    "always",
    "never",
    "often",
    "across",
    "along",
    "back",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        normalised(v.to_vec())
    }

    #[test]
    fn a_change_of_subject_is_one_boundary_where_it_happens() {
        // Eight segments near one direction, then seven near another.
        let mut e: Vec<Vec<f32>> = (0..8)
            .map(|i| unit(&[1.0, 0.1 * (i % 3) as f32, 0.0]))
            .collect();
        e.extend((0..7).map(|i| unit(&[0.1 * (i % 2) as f32, 0.0, 1.0])));
        assert_eq!(boundaries(&e, 3), vec![8]);
        // One subject throughout: no boundary.
        let same: Vec<Vec<f32>> = (0..15)
            .map(|i| unit(&[1.0, 0.05 * (i % 4) as f32, 0.0]))
            .collect();
        assert!(boundaries(&same, 3).is_empty());
        // Too short to split.
        assert!(boundaries(&e[6..10], 3).is_empty());
    }

    #[test]
    fn labels_are_each_topics_distinctive_words() {
        let texts = [
            "The telescope showed the planets.",
            "Planets orbit the sun; the telescope tracks planets.",
            "Bake the bread in a hot oven.",
            "Knead the bread dough, then bake it in the oven.",
        ];
        let topics = topics_from_cuts(&texts, &[2]);
        assert_eq!(topics.len(), 2);
        assert_eq!((topics[0].start, topics[0].end), (0, 2));
        assert_eq!(topics[0].label, "planets, telescope, showed");
        assert_eq!(topics[1].label, "bake, bread, oven");
        assert!(content_words("The, and THE: it's").is_empty());
    }
}
