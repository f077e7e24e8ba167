//! Who spoke when: pyannote segmentation-3.0 (voice activity and up to three local speakers per
//! 10 s window, windows every 2.5 s), local speakers stitched across overlapping windows into
//! chains, one GE2E embedding per chain, agglomerative clustering of the chains (automatic
//! speaker count by a similarity threshold within the given bounds, or a given count), then
//! speaker turns cleaned up like pyannote's pipeline (gaps under 0.5 s filled, turns under
//! 0.3 s dropped).
//!
//! The segmentation model tells voices apart within its window far better than GE2E embeddings
//! do across a recording (on telephone speech every GE2E voice looks alike). So the model's
//! judgement is used wherever it reaches: a local speaker active on the same frames of two
//! overlapping windows is one person (**must-link**: stitched into one chain), and two local
//! speakers of one window are two people (**cannot-link**: never clustered together). The
//! embeddings only join chains across silences and turns longer than a window's overlap; each
//! chain's embedding averages partials over all its clean speech.

use std::collections::BTreeMap;

use ndarray::{s, Array3};
use ort::value::TensorRef;

use super::ge2e::{self, Ge2e, Mel, HOP, PARTIAL_FRAMES};
use super::onnx::OnnxModel;
use crate::cancel::Cancel;

/// Sample rate of everything here.
pub const SAMPLE_RATE: usize = 16_000;
/// The segmentation model's window (10 s).
const WINDOW: usize = 10 * SAMPLE_RATE;
/// Windows start every 2.5 s: each overlaps the next by 7.5 s, where local speakers are
/// stitched, and every moment is seen by four windows (on the real set: 35.9 % DER and 6 of 15
/// speaker counts right, against 36.1 % and 4 of 15 with a 5 s step).
const STEP: usize = 5 * SAMPLE_RATE / 2;
/// The shortest input given to the model (a recording shorter than a window, zero padded).
const MIN_LAST_WINDOW: usize = 2 * SAMPLE_RATE;
/// Frame step and the centre offset of the first frame, in seconds (the model's receptive
/// field is 991 samples moved by 270).
const FRAME_STEP: f64 = 270.0 / 16_000.0;
const FRAME_OFFSET: f64 = (991.0 - 270.0) / 2.0 / 16_000.0;
/// A local speaker is active on a frame when the classes holding it have at least this
/// probability together (lower values were tried on the real set: no better).
const ACTIVE: f32 = 0.5;
/// Powerset classes: which local speakers each of the 7 outputs means.
const POWERSET: [&[usize]; 7] = [&[], &[0], &[1], &[2], &[0, 1], &[0, 2], &[1, 2]];
/// Two local speakers of overlapping windows are stitched when, over the overlap, the frames
/// both are active on are at least this share of the frames either is ...
const STITCH_IOU: f64 = 0.5;
/// ... and at least this long.
const STITCH_SECONDS: f64 = 0.5;
/// Clean (non-overlapped) speech a chain needs for an embedding at all, and for one trusted
/// enough to shape the clusters.
const MIN_EMBED_SECONDS: f64 = 0.25;
const MIN_CLUSTER_SECONDS: f64 = 1.0;
/// Partials per chain (each 1.6 s), spread over its clean speech.
const MAX_PARTIALS: usize = 6;
/// Most chains clustered (the longest speech; the others join the nearest cluster), which
/// bounds the clustering's time and memory on long recordings.
const MAX_CLUSTERED: usize = 600;
/// Partials per encoder batch (bounds memory on long recordings).
const BATCH: usize = 64;
/// Clusters whose average cosine similarity is below this are different speakers (chosen on
/// the real recordings of the evaluation set: `cargo bench -p morag-agent --bench eval --
/// --sweep`, BENCHMARKS.md).
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

/// One segmentation window: where it starts, the part of the timeline it speaks for (the
/// frames nearer its centre than any other window's), and its frames' powerset classes.
struct Window {
    start: usize,
    /// Seconds: [own.0, own.1).
    own: (f64, f64),
    classes: Vec<u8>,
}

impl Window {
    /// The time (s) of frame `i`'s centre.
    fn time(&self, i: usize) -> f64 {
        self.start as f64 / SAMPLE_RATE as f64 + FRAME_OFFSET + i as f64 * FRAME_STEP
    }
    /// The frame nearest to time `t`, if the window has one there.
    fn frame_at(&self, t: f64) -> Option<usize> {
        let f = ((t - self.start as f64 / SAMPLE_RATE as f64 - FRAME_OFFSET) / FRAME_STEP).round();
        (f >= 0.0 && (f as usize) < self.classes.len()).then_some(f as usize)
    }
    fn active(&self, i: usize, local: usize) -> bool {
        POWERSET[self.classes[i] as usize].contains(&local)
    }
}

/// Local speakers stitched across windows (one person, by the segmentation model's account);
/// the unit that gets an embedding and a speaker.
struct Local {
    /// (window, local speaker) members, sorted.
    members: Vec<(usize, usize)>,
    /// Seconds of clean speech (only this speaker, in the windows' own parts).
    clean: f64,
    embedding: Vec<f32>,
}

impl Local {
    /// Whether two chains share a window (then they are two people).
    fn shares_window(&self, other: &Local) -> bool {
        self.members
            .iter()
            .any(|(w, _)| other.members.iter().any(|(v, _)| v == w))
    }
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
        let windows = self.segment(samples, cancel)?;
        let segmented = started.elapsed().as_secs_f64();
        let chains = stitch(&windows);
        let locals = self.embed_chains(samples, &windows, chains, cancel)?;
        tracing::debug!(
            windows = windows.len(),
            chains = locals.len(),
            segmentation_s = segmented,
            embeddings_s = started.elapsed().as_secs_f64() - segmented,
            "diarization"
        );
        let labels = cluster(&locals, opts, cancel)?;
        let map: BTreeMap<(usize, usize), usize> = locals
            .iter()
            .zip(&labels)
            .flat_map(|(l, lab)| l.members.iter().map(move |m| (*m, *lab)))
            .collect();
        // Per-speaker frame activity on the global timeline, each window speaking for its own
        // part.
        let mut per: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
        let total = samples.len() as f64 / SAMPLE_RATE as f64;
        for (w, win) in windows.iter().enumerate() {
            for (i, class) in win.classes.iter().enumerate() {
                let start = win.time(i);
                if start < win.own.0 || start >= win.own.1 || start >= total {
                    continue;
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

    /// The segmentation windows: every [`STEP`] while a whole window fits, then one ending at
    /// the end of the audio; audio shorter than a window is one window as long as the audio
    /// (at least [`MIN_LAST_WINDOW`], zero padded).
    fn segment(&self, samples: &[f32], cancel: &Cancel) -> Result<Vec<Window>, String> {
        let mut starts: Vec<usize> = (0..)
            .map(|k| k * STEP)
            .take_while(|s| s + WINDOW < samples.len())
            .collect();
        let last = samples.len().saturating_sub(WINDOW);
        if starts.last() != Some(&last) {
            starts.push(last);
        }
        let centre = |s: usize| (s + WINDOW.min(samples.len()) / 2) as f64 / SAMPLE_RATE as f64;
        let mut out: Vec<Window> = Vec::with_capacity(starts.len());
        for (k, &start) in starts.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err("cancelled".into());
            }
            let end = (start + WINDOW).min(samples.len());
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
                // Each local speaker's probability (the sum over the classes holding it);
                // the active ones, at most two (the two likeliest), as a powerset class.
                Ok((0..n)
                    .map(|f| {
                        let mut p = [0f32; 3];
                        for (k, set) in POWERSET.iter().enumerate() {
                            let q = scores[[0, f, k]].exp();
                            for &l in *set {
                                p[l] += q;
                            }
                        }
                        let mut order = [0usize, 1, 2];
                        order.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
                        let on: Vec<usize> = order
                            .iter()
                            .copied()
                            .take(2)
                            .filter(|&l| p[l] >= ACTIVE)
                            .collect();
                        let mut on = on;
                        on.sort_unstable();
                        POWERSET
                            .iter()
                            .position(|set| *set == on.as_slice())
                            .unwrap_or(0) as u8
                    })
                    .collect::<Vec<u8>>())
            })?;
            let lo = if k == 0 {
                0.0
            } else {
                (centre(starts[k - 1]) + centre(start)) / 2.0
            };
            let hi = match starts.get(k + 1) {
                Some(&next) => (centre(start) + centre(next)) / 2.0,
                None => f64::INFINITY,
            };
            out.push(Window {
                start,
                own: (lo, hi),
                classes,
            });
        }
        Ok(out)
    }

    /// One embedding per chain with enough clean speech (chains without one are left out).
    fn embed_chains(
        &self,
        samples: &[f32],
        windows: &[Window],
        chains: Vec<Vec<(usize, usize)>>,
        cancel: &Cancel,
    ) -> Result<Vec<Local>, String> {
        let partial_len = PARTIAL_FRAMES * HOP;
        let hop = (FRAME_STEP * SAMPLE_RATE as f64).round() as usize;
        let mut locals = Vec::new();
        // (local index, the partial's mel rows): only those rows are kept.
        let mut partials: Vec<(usize, Mel)> = Vec::new();
        for members in chains {
            // Samples of the frames where only this speaker talks, each window's own part.
            let mut speech: Vec<f32> = Vec::new();
            for &(w, local) in &members {
                let win = &windows[w];
                for (i, class) in win.classes.iter().enumerate() {
                    let t = win.time(i);
                    if POWERSET[*class as usize] != [local] || t < win.own.0 || t >= win.own.1 {
                        continue;
                    }
                    let a = win.start
                        + ((FRAME_OFFSET + i as f64 * FRAME_STEP) * SAMPLE_RATE as f64) as usize;
                    let b = (a + hop).min(samples.len());
                    if a < b {
                        speech.extend_from_slice(&samples[a..b]);
                    }
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
            let index = locals.len();
            locals.push(Local {
                members,
                clean,
                embedding: Vec::new(),
            });
            for p in 0..parts {
                let at = if parts == 1 {
                    room / 2
                } else {
                    room * p / (parts - 1)
                };
                let mel = self.encoder.mel(&speech[at..at + partial_len]);
                let end = PARTIAL_FRAMES.min(mel.nrows());
                partials.push((index, mel.slice(s![..end, ..]).to_owned()));
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

/// Chains of local speakers: a local speaker of one window and one of the next are the same
/// person when they are active on the same frames of the two windows' overlap
/// ([`STITCH_IOU`], [`STITCH_SECONDS`]); pairs are linked best first, each local at most once
/// per neighbour, and never so that a chain would hold two locals of one window. Locals never
/// active are left out.
fn stitch(windows: &[Window]) -> Vec<Vec<(usize, usize)>> {
    let id = |w: usize, l: usize| w * 3 + l;
    let mut parent: Vec<usize> = (0..windows.len() * 3).collect();
    fn root(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    // Windows held by each chain (by root), to refuse links that would join two locals of one
    // window.
    let mut held: Vec<Vec<usize>> = (0..windows.len() * 3).map(|x| vec![x / 3]).collect();
    let min_frames = (STITCH_SECONDS / FRAME_STEP).ceil() as usize;
    for w in 0..windows.len().saturating_sub(1) {
        let (a, b) = (&windows[w], &windows[w + 1]);
        // Counts over b's frames that a also covers.
        let mut both = [[0usize; 3]; 3];
        // Frames of the overlap each local is active on, in a and in b.
        let (mut in_a, mut in_b) = ([0usize; 3], [0usize; 3]);
        for j in 0..b.classes.len() {
            let Some(i) = a.frame_at(b.time(j)) else {
                continue;
            };
            for l in 0..3 {
                in_a[l] += usize::from(a.active(i, l));
                in_b[l] += usize::from(b.active(j, l));
            }
            for (la, row) in both.iter_mut().enumerate() {
                for (lb, n) in row.iter_mut().enumerate() {
                    *n += usize::from(a.active(i, la) && b.active(j, lb));
                }
            }
        }
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for la in 0..3 {
            for lb in 0..3 {
                let either = in_a[la] + in_b[lb] - both[la][lb];
                if both[la][lb] >= min_frames && either > 0 {
                    let iou = both[la][lb] as f64 / either as f64;
                    if iou >= STITCH_IOU {
                        pairs.push((iou, la, lb));
                    }
                }
            }
        }
        pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
        let (mut used_a, mut used_b) = ([false; 3], [false; 3]);
        for (_, la, lb) in pairs {
            if used_a[la] || used_b[lb] {
                continue;
            }
            let (ra, rb) = (
                root(&mut parent, id(w, la)),
                root(&mut parent, id(w + 1, lb)),
            );
            if ra == rb || held[ra].iter().any(|x| held[rb].contains(x)) {
                continue;
            }
            used_a[la] = true;
            used_b[lb] = true;
            parent[rb] = ra;
            let moved = std::mem::take(&mut held[rb]);
            held[ra].extend(moved);
        }
    }
    let mut chains: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for (w, win) in windows.iter().enumerate() {
        for l in 0..3 {
            if (0..win.classes.len()).any(|i| win.active(i, l)) {
                let r = root(&mut parent, id(w, l));
                chains.entry(r).or_default().push((w, l));
            }
        }
    }
    chains.into_values().collect()
}

/// Cluster labels for `locals`: average-linkage agglomerative clustering of the trusted
/// embeddings (enough clean speech; at most [`MAX_CLUSTERED`], the longest), merging the
/// closest pair while its average similarity is at least the threshold (or while there are
/// more clusters than the most allowed, and never below the fewest), the others joining the
/// nearest cluster.
///
/// Two local speakers of one window are different people: the segmentation model told them
/// apart within 10 s, which it does far better than any embedding distance on the telephone
/// band. So clusters holding chains that share a window are never merged, and a short chain
/// joins the nearest cluster that no chain sharing one of its windows is in (when there is
/// one).
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
            conflict[a][b] = a != b && la.shares_window(lb);
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
    let mut centroids: Vec<Vec<f32>> = clusters
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
            .filter(|&j| j != i && labels[j] != usize::MAX && locals[j].shares_window(l))
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
        labels[i] = match nearest(true) {
            Some(k) => k,
            // Every cluster speaks in one of its windows beside it: the segmentation model
            // hears another person, so it is one (within the most allowed).
            None if centroids.len() < most => {
                centroids.push(l.embedding.clone());
                centroids.len() - 1
            }
            None => nearest(false).unwrap_or(0),
        };
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

/// Speaker turns from RTTM text (`SPEAKER file 1 start duration <NA> <NA> name ...`), the
/// speakers numbered in order of first appearance; other line types are skipped.
pub fn parse_rttm(text: &str) -> Result<Vec<Turn>, String> {
    let mut names: Vec<String> = Vec::new();
    let mut turns = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"SPEAKER") {
            continue;
        }
        let bad = || format!("RTTM line {}: {line:?}", n + 1);
        if f.len() < 8 {
            return Err(bad());
        }
        let start: f64 = f[3].parse().map_err(|_| bad())?;
        let duration: f64 = f[4].parse().map_err(|_| bad())?;
        let speaker = match names.iter().position(|x| x == f[7]) {
            Some(i) => i,
            None => {
                names.push(f[7].to_string());
                names.len() - 1
            }
        };
        turns.push(Turn {
            start,
            end: start + duration,
            speaker,
        });
    }
    Ok(turns)
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
                members: vec![(i, 0)],
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
            members: vec![(12, 1)],
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

    /// A window starting at `start` s whose frames have local speaker `l` active where
    /// `active(t, l)` says so (time in seconds on the recording's timeline).
    fn window(start: f64, active: impl Fn(f64, usize) -> bool) -> Window {
        let start = (start * SAMPLE_RATE as f64) as usize;
        let mut w = Window {
            start,
            own: (0.0, f64::INFINITY),
            classes: vec![0; 589],
        };
        for i in 0..589 {
            let t = w.time(i);
            let on: Vec<usize> = (0..3).filter(|&l| active(t, l)).collect();
            w.classes[i] = POWERSET.iter().position(|s| *s == on.as_slice()).unwrap() as u8;
        }
        w
    }

    #[test]
    fn locals_active_together_in_the_overlap_are_stitched() {
        // Person A: 1-9 s (window 0's local 0, window 1's local 1). Person B: 0-1.5 s only
        // (window 0's local 1, before window 1 starts). Person C: 11-12 s (window 1's local 0).
        let w0 = window(0.0, |t, l| match l {
            0 => (1.0..9.0).contains(&t),
            1 => t < 1.5,
            _ => false,
        });
        let w1 = window(2.5, |t, l| match l {
            1 => t < 9.0,
            0 => (11.0..12.0).contains(&t),
            _ => false,
        });
        let mut chains = stitch(&[w0, w1]);
        chains.sort();
        assert_eq!(
            chains,
            vec![vec![(0, 0), (1, 1)], vec![(0, 1)], vec![(1, 0)]]
        );
    }

    #[test]
    fn speaker_bounds_are_honoured() {
        let dirs = [[1.0, 0.1, 0.0], [0.0, 1.0, 0.1], [0.1, 0.0, 1.0]];
        let locals: Vec<Local> = (0..9)
            .map(|i| Local {
                members: vec![(i, 0)],
                clean: 3.0,
                embedding: ge2e::normalised(dirs[i % 3].to_vec()),
            })
            .collect();
        let cancel = Cancel::new();
        let count = |o: DiarizeOptions| {
            let labels = cluster(&locals, &o, &cancel).unwrap();
            labels.iter().max().unwrap() + 1
        };
        assert_eq!(count(DiarizeOptions::default()), 3);
        let at_most_two = DiarizeOptions {
            max_speakers: Some(2),
            ..Default::default()
        };
        assert_eq!(count(at_most_two), 2);
        // A low bar would merge everything; at least 3 keeps the three.
        let at_least_three = DiarizeOptions {
            min_speakers: Some(3),
            threshold: -1.0,
            ..Default::default()
        };
        assert_eq!(count(at_least_three), 3);
        // Two locals of one window are never one speaker, whatever the similarity.
        let twins = vec![
            Local {
                members: vec![(0, 0)],
                clean: 3.0,
                embedding: vec![1.0, 0.0],
            },
            Local {
                members: vec![(0, 1)],
                clean: 3.0,
                embedding: vec![1.0, 0.0],
            },
        ];
        let labels = cluster(&twins, &DiarizeOptions::default(), &cancel).unwrap();
        assert_ne!(labels[0], labels[1]);
    }

    #[test]
    fn rttm_lines_become_turns() {
        let text = "SPEAKER f 1 6.690 0.430 <NA> <NA> speaker90 <NA> <NA>\n\
                    SPEAKER f 1 7.550 0.800 <NA> <NA> speaker91 <NA> <NA>\n\
                    SPEAKER f 1 8.320 1.700 <NA> <NA> speaker90 <NA> <NA>\n";
        let turns = parse_rttm(text).unwrap();
        assert_eq!(turns.len(), 3);
        assert_eq!(turns[1].speaker, 1);
        assert_eq!(turns[2].speaker, 0);
        assert!((turns[2].end - 10.02).abs() < 1e-9);
        assert!(parse_rttm("SPEAKER f 1 x 0.4 <NA> <NA> a").is_err());
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
