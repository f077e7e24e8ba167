//! Who spoke when: pyannote segmentation-3.0 (voice activity and up to three local speakers per
//! 10 s window), one GE2E embedding per (window, local speaker), agglomerative clustering of
//! the embeddings (automatic speaker count by a similarity threshold, or a given count), then
//! speaker turns cleaned up like pyannote's pipeline (gaps under 0.5 s filled, turns under
//! 0.3 s dropped).
//!
//! Windows do not overlap: the clustering links local speakers across windows, and a window
//! costs as much as 2.5 s of transcription would not (the budget is a share of Whisper's time).

use std::collections::BTreeMap;

use ndarray::{s, Array3};
use ort::value::TensorRef;

use super::ge2e::{self, Ge2e, Mel, HOP, PARTIAL_FRAMES};
use super::onnx::OnnxModel;
use crate::media::Cancel;

/// Sample rate of everything here.
pub const SAMPLE_RATE: usize = 16_000;
/// The segmentation model's window (10 s).
const WINDOW: usize = 10 * SAMPLE_RATE;
/// The shortest input given to the model (the last window of a recording, zero padded).
const MIN_LAST_WINDOW: usize = 2 * SAMPLE_RATE;
/// Frame step and the centre offset of the first frame, in seconds (the model's receptive
/// field is 991 samples moved by 270).
const FRAME_STEP: f64 = 270.0 / 16_000.0;
const FRAME_OFFSET: f64 = (991.0 - 270.0) / 2.0 / 16_000.0;
/// Powerset classes: which local speakers each of the 7 outputs means.
const POWERSET: [&[usize]; 7] = [&[], &[0], &[1], &[2], &[0, 1], &[0, 2], &[1, 2]];
/// Clean (non-overlapped) speech a local speaker needs for an embedding at all, and for one
/// trusted enough to shape the clusters.
const MIN_EMBED_SECONDS: f64 = 0.25;
const MIN_CLUSTER_SECONDS: f64 = 1.0;
/// Partials per local speaker (each 1.6 s; more costs time and changes little).
const MAX_PARTIALS: usize = 2;
/// Most embeddings clustered (the longest speech; the others join the nearest cluster), which
/// bounds the clustering's time and memory on long recordings (600 is 100 min of one speaker
/// per window, or 50 min of two).
const MAX_CLUSTERED: usize = 600;
/// Partials per encoder batch (bounds memory on long recordings).
const BATCH: usize = 64;
/// Clusters whose average cosine similarity is below this are different speakers.
pub const DEFAULT_THRESHOLD: f32 = 0.72;
/// pyannote's clean-up: fill gaps shorter than this within a speaker, drop shorter turns.
const MIN_DURATION_OFF: f64 = 0.5;
const MIN_DURATION_ON: f64 = 0.3;

/// One speaker's stretch of speech.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub start: f64,
    pub end: f64,
    /// 0-based, in order of first speech.
    pub speaker: usize,
}

/// How to diarize one recording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiarizeOptions {
    /// The number of speakers when known (the same as `min_speakers` and `max_speakers`);
    /// otherwise found with `threshold` within the bounds.
    pub num_speakers: Option<usize>,
    /// At least this many speakers (a hint: fewer are found when the segmentation model hears
    /// fewer voices).
    pub min_speakers: Option<usize>,
    /// At most this many speakers (a hint: more are kept when one window holds more voices).
    pub max_speakers: Option<usize>,
    pub threshold: f32,
}

impl Default for DiarizeOptions {
    fn default() -> Self {
        Self {
            num_speakers: None,
            min_speakers: None,
            max_speakers: None,
            threshold: DEFAULT_THRESHOLD,
        }
    }
}

impl DiarizeOptions {
    /// The bounds on the speaker count: (at least, at most).
    fn bounds(&self) -> (usize, usize) {
        match self.num_speakers {
            Some(n) => (n.max(1), n.max(1)),
            None => {
                let lo = self.min_speakers.unwrap_or(1).max(1);
                (lo, self.max_speakers.unwrap_or(usize::MAX).max(lo))
            }
        }
    }
}

/// The loaded models.
#[derive(Debug)]
pub struct Diarizer {
    segmentation: OnnxModel,
    encoder: Ge2e,
    /// Threads the speaker encoder's batches are spread over.
    threads: usize,
}

/// One local speaker of one window: the unit that gets an embedding and a speaker. (Splitting
/// it at pauses into shorter runs was tried: embeddings of 1-2 s runs of one real voice were
/// too noisy to cluster, jfk.wav's falling to 0.67 similarity, below two different espeak-ng
/// voices.)
struct Local {
    window: usize,
    local: usize,
    /// Seconds of clean speech.
    clean: f64,
    embedding: Vec<f32>,
}

impl Diarizer {
    pub fn new(segmentation: OnnxModel, encoder: Ge2e, threads: usize) -> Self {
        Self {
            segmentation,
            encoder,
            threads: threads.max(1),
        }
    }

    /// Speaker turns of 16 kHz mono `samples`, sorted by start.
    pub fn diarize(
        &self,
        samples: &[f32],
        opts: &DiarizeOptions,
        cancel: &Cancel,
    ) -> Result<Vec<Turn>, String> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let activity = self.segment(samples, cancel)?;
        let segmented = started.elapsed().as_secs_f64();
        let locals = self.embed_locals(samples, &activity, cancel)?;
        tracing::debug!(
            windows = activity.len(),
            local_speakers = locals.len(),
            segmentation_s = segmented,
            embeddings_s = started.elapsed().as_secs_f64() - segmented,
            "diarization"
        );
        let labels = cluster(&locals, opts, cancel)?;
        let map: BTreeMap<(usize, usize), usize> = locals
            .iter()
            .zip(&labels)
            .map(|(l, lab)| ((l.window, l.local), *lab))
            .collect();
        // Per-speaker frame activity on the global timeline.
        let mut per: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
        let total = samples.len() as f64 / SAMPLE_RATE as f64;
        for (w, frames) in activity.iter().enumerate() {
            let w0 = (w * WINDOW) as f64 / SAMPLE_RATE as f64;
            for (i, class) in frames.iter().enumerate() {
                let start = w0 + FRAME_OFFSET + i as f64 * FRAME_STEP;
                if start >= total {
                    break;
                }
                for &local in POWERSET[*class as usize] {
                    if let Some(&spk) = map.get(&(w, local)) {
                        per.entry(spk)
                            .or_default()
                            .push((start, (start + FRAME_STEP).min(total)));
                    }
                }
            }
        }
        let mut turns = Vec::new();
        for (spk, frames) in per {
            for (start, end) in clean_up(&frames) {
                turns.push(Turn {
                    start,
                    end,
                    speaker: spk,
                });
            }
        }
        // Number speakers by first speech.
        turns.sort_by(|a, b| a.start.total_cmp(&b.start));
        let mut order: Vec<usize> = Vec::new();
        for t in &turns {
            if !order.contains(&t.speaker) {
                order.push(t.speaker);
            }
        }
        for t in &mut turns {
            t.speaker = order.iter().position(|&s| s == t.speaker).unwrap_or(0);
        }
        Ok(turns)
    }

    /// The powerset class of every frame of every window.
    fn segment(&self, samples: &[f32], cancel: &Cancel) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        for start in (0..samples.len()).step_by(WINDOW) {
            if cancel.is_cancelled() {
                return Err("cancelled".into());
            }
            let end = (start + WINDOW).min(samples.len());
            // The model takes any length: the last window is only as long as the audio left
            // (at least [`MIN_LAST_WINDOW`], zero padded), not a mostly silent 10 s.
            let len = WINDOW.min((end - start).max(MIN_LAST_WINDOW));
            let mut input = Array3::<f32>::zeros((1, 1, len));
            input
                .slice_mut(s![0, 0, ..end - start])
                .assign(&ndarray::ArrayView1::from(&samples[start..end]));
            let classes = self.segmentation.with(|session| {
                let outputs = session
                    .run(ort::inputs![
                        "input" => TensorRef::from_array_view(&input).map_err(|e| e.to_string())?
                    ])
                    .map_err(|e| format!("segmentation failed: {e}"))?;
                let scores = outputs[0]
                    .try_extract_array::<f32>()
                    .map_err(|e| format!("segmentation output: {e}"))?;
                if scores.ndim() != 3
                    || scores.shape()[0] != 1
                    || scores.shape()[2] != POWERSET.len()
                {
                    return Err(format!(
                        "segmentation output has shape {:?}, expected [1, frames, 7]",
                        scores.shape()
                    ));
                }
                let n = scores.shape()[1];
                Ok((0..n)
                    .map(|f| {
                        let mut best = 0u8;
                        for k in 1..POWERSET.len() {
                            if scores[[0, f, k]] > scores[[0, f, best as usize]] {
                                best = k as u8;
                            }
                        }
                        best
                    })
                    .collect::<Vec<u8>>())
            })?;
            out.push(classes);
        }
        Ok(out)
    }

    /// One embedding per local speaker with enough clean speech.
    fn embed_locals(
        &self,
        samples: &[f32],
        activity: &[Vec<u8>],
        cancel: &Cancel,
    ) -> Result<Vec<Local>, String> {
        let partial_len = PARTIAL_FRAMES * HOP;
        let mut locals = Vec::new();
        // (local index, the partial's mel rows): only those rows are kept.
        let mut partials: Vec<(usize, Mel)> = Vec::new();
        for (w, frames) in activity.iter().enumerate() {
            let w0 = w * WINDOW;
            for local in 0..3 {
                // Samples of the frames where only this speaker talks.
                let mut speech: Vec<f32> = Vec::new();
                for (i, class) in frames.iter().enumerate() {
                    if POWERSET[*class as usize] != [local] {
                        continue;
                    }
                    let a =
                        w0 + ((FRAME_OFFSET + i as f64 * FRAME_STEP) * SAMPLE_RATE as f64) as usize;
                    let b = (a + 270).min(samples.len());
                    if a < b {
                        speech.extend_from_slice(&samples[a..b]);
                    }
                }
                let clean = speech.len() as f64 / SAMPLE_RATE as f64;
                if clean < MIN_EMBED_SECONDS {
                    continue;
                }
                let mut speech = ge2e::normalise_volume(&speech, -30.0);
                let n = speech.len();
                while speech.len() < partial_len {
                    let take = (partial_len - speech.len()).min(n);
                    speech.extend_from_within(..take);
                }
                let parts = ((speech.len() as f64 / partial_len as f64).round() as usize)
                    .clamp(1, MAX_PARTIALS);
                let room = speech.len() - partial_len;
                let mel = self.encoder.mel(&speech);
                let index = locals.len();
                locals.push(Local {
                    window: w,
                    local,
                    clean,
                    embedding: Vec::new(),
                });
                for p in 0..parts {
                    let at = if parts == 1 {
                        room / 2
                    } else {
                        room * p / (parts - 1)
                    };
                    let f = (at / HOP).min(mel.nrows().saturating_sub(PARTIAL_FRAMES));
                    let end = (f + PARTIAL_FRAMES).min(mel.nrows());
                    partials.push((index, mel.slice(s![f..end, ..]).to_owned()));
                }
            }
        }
        // Every partial of the recording through the encoder in batches (bounded), the
        // batches of each round spread over the threads.
        let mut sums: Vec<Vec<Vec<f32>>> = vec![Vec::new(); locals.len()];
        let per_batch = partials.len().div_ceil(self.threads).clamp(1, BATCH);
        let batches: Vec<&[(usize, Mel)]> = partials.chunks(per_batch).collect();
        for round in batches.chunks(self.threads) {
            if cancel.is_cancelled() {
                return Err("cancelled".into());
            }
            let embedded: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
                let handles: Vec<_> = round
                    .iter()
                    .map(|batch| {
                        scope.spawn(move || {
                            let views: Vec<_> = batch.iter().map(|(_, m)| m.view()).collect();
                            self.encoder.embed_partials(&views)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("speaker encoder thread"))
                    .collect()
            });
            for (batch, embeddings) in round.iter().zip(embedded) {
                for ((i, _), e) in batch.iter().zip(embeddings) {
                    sums[*i].push(e);
                }
            }
        }
        for (l, parts) in locals.iter_mut().zip(sums) {
            l.embedding = ge2e::mean_normalised(&parts);
        }
        Ok(locals)
    }
}

/// Cluster labels for `locals`: average-linkage agglomerative clustering of the trusted
/// embeddings (enough clean speech; at most [`MAX_CLUSTERED`], the longest), merging the
/// closest pair while its average similarity is at least the threshold (or while there are
/// more clusters than the most allowed, and never below the fewest), the others joining the
/// nearest cluster.
///
/// Two local speakers of one window are different people: the segmentation model told them
/// apart within 10 s, which it does far better than any embedding distance on the telephone
/// band. So clusters holding locals of the same window are never merged, and a short local
/// joins the nearest cluster that no other local of its window is in (when there is one).
fn cluster(locals: &[Local], opts: &DiarizeOptions, cancel: &Cancel) -> Result<Vec<usize>, String> {
    if locals.is_empty() {
        return Ok(Vec::new());
    }
    let (fewest, most) = opts.bounds();
    let mut trusted: Vec<usize> = (0..locals.len())
        .filter(|&i| locals[i].clean >= MIN_CLUSTER_SECONDS)
        .collect();
    if trusted.len() > MAX_CLUSTERED {
        trusted.sort_by(|&a, &b| locals[b].clean.total_cmp(&locals[a].clean));
        trusted.truncate(MAX_CLUSTERED);
        trusted.sort_unstable();
    }
    if trusted.is_empty() {
        // Only short speech: trust the longest.
        let best = (0..locals.len())
            .max_by(|&a, &b| locals[a].clean.total_cmp(&locals[b].clean))
            .expect("non-empty");
        trusted.push(best);
    }
    let n = trusted.len();
    // Sums of similarities between clusters (one per trusted embedding at first), and whether
    // two clusters share a window, kept up to date as clusters merge, so that a merge costs
    // one pass over the clusters.
    let mut total = vec![vec![0f32; n]; n];
    let mut conflict = vec![vec![false; n]; n];
    for a in 0..n {
        for b in 0..n {
            let (la, lb) = (&locals[trusted[a]], &locals[trusted[b]]);
            total[a][b] = ge2e::cosine(&la.embedding, &lb.embedding);
            conflict[a][b] = a != b && la.window == lb.window;
        }
    }
    let mut members: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    let mut alive: Vec<usize> = (0..n).collect();
    while alive.len() > fewest {
        if cancel.is_cancelled() {
            return Err("cancelled".into());
        }
        let mut best: Option<(f32, usize, usize)> = None;
        for (ia, &a) in alive.iter().enumerate() {
            for &b in &alive[ia + 1..] {
                if conflict[a][b] {
                    continue;
                }
                let avg = total[a][b] / (members[a].len() * members[b].len()) as f32;
                if best.is_none_or(|(s, _, _)| avg > s) {
                    best = Some((avg, a, b));
                }
            }
        }
        let Some((avg, a, b)) = best else { break };
        if avg < opts.threshold && alive.len() <= most {
            break;
        }
        for &x in &alive {
            let t = total[b][x];
            total[a][x] += t;
            total[x][a] = total[a][x];
            let c = conflict[a][x] || conflict[b][x];
            conflict[a][x] = c;
            conflict[x][a] = c;
        }
        let moved = std::mem::take(&mut members[b]);
        members[a].extend(moved);
        alive.retain(|&x| x != b);
    }
    let clusters: Vec<&Vec<usize>> = alive.iter().map(|&a| &members[a]).collect();
    let centroids: Vec<Vec<f32>> = clusters
        .iter()
        .map(|c| {
            let vs: Vec<Vec<f32>> = c
                .iter()
                .map(|&i| locals[trusted[i]].embedding.clone())
                .collect();
            ge2e::mean_normalised(&vs)
        })
        .collect();
    let mut labels = vec![usize::MAX; locals.len()];
    for (ci, c) in clusters.iter().enumerate() {
        for &i in c.iter() {
            labels[trusted[i]] = ci;
        }
    }
    // Short locals, longest first, each to the nearest cluster its window does not use yet
    // (the nearest of all when every cluster is used there).
    let mut rest: Vec<usize> = (0..locals.len())
        .filter(|&i| labels[i] == usize::MAX)
        .collect();
    rest.sort_by(|&a, &b| locals[b].clean.total_cmp(&locals[a].clean));
    for i in rest {
        let l = &locals[i];
        let used: Vec<usize> = (0..locals.len())
            .filter(|&j| j != i && locals[j].window == l.window && labels[j] != usize::MAX)
            .map(|j| labels[j])
            .collect();
        let nearest = |free_only: bool| {
            centroids
                .iter()
                .enumerate()
                .filter(|(k, _)| !free_only || !used.contains(k))
                .max_by(|a, b| {
                    ge2e::cosine(&l.embedding, a.1).total_cmp(&ge2e::cosine(&l.embedding, b.1))
                })
                .map(|(k, _)| k)
        };
        labels[i] = nearest(true).or_else(|| nearest(false)).unwrap_or(0);
    }
    Ok(labels)
}

/// Merge a speaker's frames into turns: gaps under [`MIN_DURATION_OFF`] filled, turns under
/// [`MIN_DURATION_ON`] dropped.
fn clean_up(frames: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted = frames.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (s0, e0) in sorted {
        match out.last_mut() {
            Some(last) if s0 - last.1 < MIN_DURATION_OFF => last.1 = last.1.max(e0),
            _ => out.push((s0, e0)),
        }
    }
    out.retain(|(s0, e0)| e0 - s0 >= MIN_DURATION_ON);
    out
}

/// The speaker who talks most during `[start, end)`, else the one whose speech is nearest.
pub fn speaker_of(turns: &[Turn], start: f64, end: f64) -> Option<usize> {
    let mut overlap: BTreeMap<usize, f64> = BTreeMap::new();
    for t in turns {
        let o = t.end.min(end) - t.start.max(start);
        if o > 0.0 {
            *overlap.entry(t.speaker).or_default() += o;
        }
    }
    if let Some((&s, _)) = overlap.iter().max_by(|a, b| a.1.total_cmp(b.1)) {
        return Some(s);
    }
    turns
        .iter()
        .min_by(|a, b| {
            let da = (a.start - end).max(start - a.end).max(0.0);
            let db = (b.start - end).max(start - b.end).max(0.0);
            da.total_cmp(&db)
        })
        .map(|t| t.speaker)
}

/// `SPEAKER_00`, `SPEAKER_01`, ... as pyannote and MoRAG name them.
pub fn speaker_name(i: usize) -> String {
    format!("SPEAKER_{i:02}")
}

/// The diarization error rate of `hyp` against `reference` (missed speech + false alarm +
/// speaker confusion, over reference speech), scored in 10 ms steps outside a `collar` around
/// every reference turn boundary, with the best one-to-one mapping of speakers. Returns
/// `(der, missed, false_alarm, confusion, reference_seconds)`.
pub fn der(reference: &[Turn], hyp: &[Turn], collar: f64) -> (f64, f64, f64, f64, f64) {
    let end = reference
        .iter()
        .chain(hyp)
        .map(|t| t.end)
        .fold(0.0, f64::max);
    let step = 0.01;
    let n_ref = reference.iter().map(|t| t.speaker + 1).max().unwrap_or(0);
    let n_hyp = hyp.iter().map(|t| t.speaker + 1).max().unwrap_or(0);
    // Frames: (reference speakers, hypothesis speakers) outside the collars.
    let mut frames: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    let mut t = step / 2.0;
    while t < end {
        let near = reference
            .iter()
            .any(|r| (t - r.start).abs() < collar || (t - r.end).abs() < collar);
        if !near {
            let active = |turns: &[Turn]| -> Vec<usize> {
                let mut v: Vec<usize> = turns
                    .iter()
                    .filter(|x| x.start <= t && t < x.end)
                    .map(|x| x.speaker)
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            frames.push((active(reference), active(hyp)));
        }
        t += step;
    }
    // Co-occurrence counts, then the mapping that maximises matched time.
    let mut co = vec![vec![0usize; n_hyp]; n_ref];
    for (r, h) in &frames {
        for &a in r {
            for &b in h {
                co[a][b] += 1;
            }
        }
    }
    let mapping = best_mapping(&co, n_ref, n_hyp);
    let (mut missed, mut fa, mut conf, mut total) = (0usize, 0usize, 0usize, 0usize);
    for (r, h) in &frames {
        total += r.len();
        missed += r.len().saturating_sub(h.len());
        fa += h.len().saturating_sub(r.len());
        let matched = r
            .iter()
            .filter(|&&a| mapping[a].is_some_and(|b| h.contains(&b)))
            .count();
        conf += r.len().min(h.len()) - matched;
    }
    let secs = |n: usize| n as f64 * step;
    let der = if total == 0 {
        0.0
    } else {
        (missed + fa + conf) as f64 / total as f64
    };
    (der, secs(missed), secs(fa), secs(conf), secs(total))
}

/// The reference -> hypothesis speaker mapping with the most co-occurring frames (exhaustive
/// over assignments: speaker counts here are small).
fn best_mapping(co: &[Vec<usize>], n_ref: usize, n_hyp: usize) -> Vec<Option<usize>> {
    fn go(
        co: &[Vec<usize>],
        r: usize,
        used: &mut Vec<bool>,
        cur: &mut Vec<Option<usize>>,
        best: &mut (usize, Vec<Option<usize>>),
        score: usize,
    ) {
        if r == co.len() {
            if score >= best.0 {
                *best = (score, cur.clone());
            }
            return;
        }
        cur.push(None);
        go(co, r + 1, used, cur, best, score);
        cur.pop();
        for h in 0..used.len() {
            if !used[h] {
                used[h] = true;
                cur.push(Some(h));
                go(co, r + 1, used, cur, best, score + co[r][h]);
                cur.pop();
                used[h] = false;
            }
        }
    }
    let mut best = (0, vec![None; n_ref]);
    go(
        co,
        0,
        &mut vec![false; n_hyp],
        &mut Vec::new(),
        &mut best,
        0,
    );
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(start: f64, end: f64, speaker: usize) -> Turn {
        Turn {
            start,
            end,
            speaker,
        }
    }

    #[test]
    fn der_counts_missed_false_alarm_and_confusion() {
        let reference = vec![turn(0.0, 10.0, 0), turn(10.0, 20.0, 1)];
        // Perfect, with the labels swapped: 0.
        let swapped = vec![turn(0.0, 10.0, 1), turn(10.0, 20.0, 0)];
        assert!(der(&reference, &swapped, 0.25).0 < 1e-9);
        // One speaker for everything: half the time confused.
        let one = vec![turn(0.0, 20.0, 0)];
        let (d, missed, fa, conf, _) = der(&reference, &one, 0.25);
        assert!((d - 0.5).abs() < 0.02, "{d}");
        assert!(missed < 0.05 && fa < 0.05 && conf > 9.0);
        // Nothing found: all missed.
        assert!((der(&reference, &[], 0.25).0 - 1.0).abs() < 1e-9);
        // The collar forgives a late start.
        let late = vec![turn(0.2, 10.0, 0), turn(10.0, 20.0, 1)];
        assert!(der(&reference, &late, 0.25).0 < 1e-9);
        assert!(der(&reference, &late, 0.0).0 > 0.005);
    }

    #[test]
    fn clustering_finds_the_groups_or_the_given_count() {
        // Three voices, four windows each, plus a short local that joins its nearest group.
        let dirs = [[1.0, 0.1, 0.0], [0.0, 1.0, 0.1], [0.1, 0.0, 1.0]];
        let mut locals: Vec<Local> = (0..12)
            .map(|i| Local {
                window: i,
                local: 0,
                clean: 3.0,
                embedding: ge2e::normalised(
                    dirs[i % 3]
                        .iter()
                        .enumerate()
                        .map(|(k, v)| v + 0.05 * ((i + k) % 2) as f32)
                        .collect(),
                ),
            })
            .collect();
        locals.push(Local {
            window: 12,
            local: 1,
            clean: 0.4,
            embedding: ge2e::normalised(vec![0.9, 0.2, 0.1]),
        });
        let cancel = Cancel::new();
        let labels = cluster(&locals, &DiarizeOptions::default(), &cancel).unwrap();
        assert_eq!(labels.iter().max(), Some(&2), "{labels:?}");
        for i in 0..12 {
            assert_eq!(labels[i], labels[i % 3], "{labels:?}");
        }
        assert_eq!(labels[12], labels[0]);
        let two = DiarizeOptions {
            num_speakers: Some(2),
            ..Default::default()
        };
        let labels = cluster(&locals, &two, &cancel).unwrap();
        assert_eq!(labels.iter().max(), Some(&1), "{labels:?}");
        cancel.cancel();
        assert!(cluster(&locals, &DiarizeOptions::default(), &cancel).is_err());
    }

    #[test]
    fn clean_up_fills_short_gaps_and_drops_short_turns() {
        let frames = vec![(0.0, 1.0), (1.3, 2.0), (5.0, 5.2)];
        assert_eq!(clean_up(&frames), vec![(0.0, 2.0)]);
    }

    #[test]
    fn segments_get_the_speaker_who_talks_most() {
        let turns = vec![turn(0.0, 3.0, 0), turn(3.0, 10.0, 1)];
        assert_eq!(speaker_of(&turns, 2.0, 6.0), Some(1));
        assert_eq!(speaker_of(&turns, 0.0, 2.0), Some(0));
        assert_eq!(speaker_of(&turns, 11.0, 12.0), Some(1));
        assert_eq!(speaker_of(&[], 0.0, 1.0), None);
        assert_eq!(speaker_name(3), "SPEAKER_03");
    }
}
