//! Where to cut long audio for transcription, from voice activity (speech probability per
//! 32 ms chunk, [`crate::speech::vad`]).
//!
//! Whisper's encoder costs less per second on short windows (its attention grows with the
//! square of the context), so long audio is transcribed in pieces of 10-26 s, each encoded for
//! its own length. A cut inside speech loses words: Whisper drops a sentence that a cut splits
//! (a real telephone call lost "Oh, I'm originally from Chicago also." at an energy minimum
//! that fell inside speech). So pieces are cut only in pauses, stretches the voice activity
//! detector calls non-speech:
//!
//! 1. **Speech runs**: a run starts at a chunk with probability >= [`THRESHOLD`] and ends at
//!    the first chunk under [`NEG_THRESHOLD`] (hysteresis, as Silero's own segmenter).
//! 2. **Regions**: runs closer than [`SKIP_SILENCE`] are joined; runs shorter than
//!    [`MIN_SPEECH`] alone are dropped; each region is padded by [`PAD`] on both sides. Audio
//!    outside every region (silence, music, noise of 2 s or more) is not transcribed, so
//!    Whisper cannot invent text there.
//! 3. **Pieces**: a region longer than [`MAX_PIECE`] is cut at the middle of the longest pause
//!    (a gap between runs of at least [`MIN_PAUSE`]) between [`MIN_PIECE`] and [`MAX_PIECE`]
//!    from the piece's start, leaving at least [`MIN_PIECE`] behind; failing that, the longest
//!    pause at least 2 s into the piece; failing that, the first pause after [`MAX_PIECE`], so
//!    that the piece is longer than one window and is decoded with whisper.cpp's own 30 s
//!    windows ([`Piece::fits_one_window`] false) rather than cut inside speech.

use std::ops::Range;

use crate::speech::vad::CHUNK;

/// Samples per second.
const RATE: usize = 16_000;
/// A chunk at or above this starts speech (Silero's default).
pub const THRESHOLD: f32 = 0.5;
/// A chunk below this ends speech (Silero's default: threshold - 0.15).
pub const NEG_THRESHOLD: f32 = 0.35;
/// Non-speech at least this long is skipped (faster-whisper's `min_silence_duration_ms`).
pub const SKIP_SILENCE: f64 = 2.0;
/// A region with less speech than this is dropped (Silero's `min_speech_duration_ms`).
pub const MIN_SPEECH: f64 = 0.25;
/// Kept on each side of a region (faster-whisper's `speech_pad_ms`).
pub const PAD: f64 = 0.4;
/// The shortest gap between speech runs that a piece may be cut in (three chunks, 96 ms).
pub const MIN_PAUSE: usize = 3;
/// The longest piece cut for a fitted encoder context: its context (audio plus a 2.56 s
/// margin, [`crate::media::audio::fitted_audio_ctx`]) stays under 30 s.
pub const MAX_PIECE: f64 = 26.0;
/// The shortest piece cut when there is a choice.
pub const MIN_PIECE: f64 = 10.0;
/// Never cut closer than this to a piece's start.
const MIN_ANY_PIECE: f64 = 2.0;

/// One stretch of audio for one `full()` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Samples of the whole audio.
    pub range: Range<usize>,
}

impl Piece {
    /// Whether the piece fits one encoder window with a fitted context (at most
    /// [`MAX_PIECE`]); longer pieces had no pause to cut at.
    pub fn fits_one_window(&self) -> bool {
        self.range.len() <= secs(MAX_PIECE)
    }
}

fn secs(s: f64) -> usize {
    (s * RATE as f64).round() as usize
}

fn chunks(s: f64) -> usize {
    (s * RATE as f64 / CHUNK as f64).round() as usize
}

/// Runs of speech, as chunk ranges (see the module doc, step 1).
pub fn speech_runs(probs: &[f32]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start: Option<usize> = None;
    for (i, &p) in probs.iter().enumerate() {
        match start {
            None if p >= THRESHOLD => start = Some(i),
            Some(s) if p < NEG_THRESHOLD => {
                runs.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push(s..probs.len());
    }
    runs
}

/// The pieces to transcribe of `len` samples with speech probabilities `probs` (one per
/// [`CHUNK`]); in order, not overlapping, and covering every speech run. Empty when nobody
/// speaks.
pub fn plan(len: usize, probs: &[f32]) -> Vec<Piece> {
    let runs = speech_runs(probs);
    // Regions: runs joined across gaps shorter than SKIP_SILENCE, each with its runs.
    let mut regions: Vec<Vec<Range<usize>>> = Vec::new();
    for run in runs {
        match regions.last_mut() {
            Some(r) if run.start - r.last().expect("non-empty").end < chunks(SKIP_SILENCE) => {
                r.push(run)
            }
            _ => regions.push(vec![run]),
        }
    }
    regions.retain(|r| r.iter().map(|x| x.len()).sum::<usize>() >= chunks(MIN_SPEECH).max(1));
    let to_samples = |c: usize| (c * CHUNK).min(len);
    let mut pieces = Vec::new();
    for runs in regions {
        let start = to_samples(runs[0].start).saturating_sub(secs(PAD));
        let end = (to_samples(runs[runs.len() - 1].end) + secs(PAD)).min(len);
        // Cut points: the middle of every long enough pause, with the pause's length.
        let cuts: Vec<(usize, usize)> = runs
            .windows(2)
            .filter(|w| w[1].start - w[0].end >= MIN_PAUSE)
            .map(|w| {
                let (a, b) = (to_samples(w[0].end), to_samples(w[1].start));
                ((a + b) / 2, b - a)
            })
            .collect();
        cut_region(start..end, &cuts, &mut pieces);
    }
    pieces
}

/// Cut `region` into pieces at `cuts` ((sample, pause length)) per the module doc, step 3.
fn cut_region(region: Range<usize>, cuts: &[(usize, usize)], out: &mut Vec<Piece>) {
    let mut start = region.start;
    while region.end - start > secs(MAX_PIECE) {
        // The longest pause in [lo, hi]; ties go to the later one.
        let longest = |lo: usize, hi: usize| {
            cuts.iter()
                .filter(|(at, _)| *at >= lo && *at <= hi)
                .max_by_key(|(at, len)| (*len, *at))
                .map(|(at, _)| *at)
        };
        let ideal = longest(
            start + secs(MIN_PIECE),
            (start + secs(MAX_PIECE)).min(region.end - secs(MIN_PIECE)),
        );
        let cut = ideal
            .or_else(|| longest(start + secs(MIN_ANY_PIECE), start + secs(MAX_PIECE)))
            .or_else(|| {
                cuts.iter()
                    .map(|(at, _)| *at)
                    .find(|&at| at > start + secs(MAX_PIECE) && at < region.end)
            });
        let Some(cut) = cut else { break };
        out.push(Piece { range: start..cut });
        start = cut;
    }
    if start < region.end {
        out.push(Piece {
            range: start..region.end,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probabilities for `seconds` of audio that is speech (0.9) except in `pauses`
    /// ((start, length) in seconds, 0.05).
    fn probs(seconds: f64, pauses: &[(f64, f64)]) -> Vec<f32> {
        let n = chunks(seconds);
        (0..n)
            .map(|i| {
                let t = (i * CHUNK) as f64 / RATE as f64;
                if pauses.iter().any(|&(s, l)| t >= s && t < s + l) {
                    0.05
                } else {
                    0.9
                }
            })
            .collect()
    }

    fn in_pause(sample: usize, pauses: &[(f64, f64)]) -> bool {
        let t = sample as f64 / RATE as f64;
        pauses.iter().any(|&(s, l)| t >= s && t <= s + l)
    }

    #[test]
    fn long_speech_is_cut_only_in_pauses() {
        let pauses = [
            (6.0, 0.3),
            (13.0, 0.15),
            (24.0, 0.5),
            (37.0, 0.2),
            (52.0, 0.4),
        ];
        let len = secs(70.0);
        let pieces = plan(len, &probs(70.0, &pauses));
        assert_eq!(pieces.first().unwrap().range.start, 0);
        assert_eq!(pieces.last().unwrap().range.end, len);
        for w in pieces.windows(2) {
            assert_eq!(w[0].range.end, w[1].range.start, "{pieces:?}");
            assert!(in_pause(w[0].range.end, &pauses), "{pieces:?}");
        }
        for p in &pieces {
            assert!(p.fits_one_window(), "{pieces:?}");
            assert!(p.range.len() >= secs(MIN_PIECE), "{pieces:?}");
        }
        // The longest pause in reach wins: 24 s (0.5 s) over 13 s (0.15 s).
        assert!(in_pause(pieces[0].range.end, &[(24.0, 0.5)]), "{pieces:?}");
    }

    #[test]
    fn speech_without_a_pause_is_not_cut() {
        // 40 s of speech with one pause at 33 s: no cut before it, so one long piece (decoded
        // in whisper.cpp's own windows), then the rest.
        let len = secs(40.0);
        let pieces = plan(len, &probs(40.0, &[(33.0, 0.2)]));
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert!(!pieces[0].fits_one_window());
        assert!(in_pause(pieces[0].range.end, &[(33.0, 0.2)]));
        // A pause too short to trust (one chunk) is no cut either.
        let pieces = plan(len, &probs(40.0, &[(20.0, 0.04)]));
        assert_eq!(pieces, vec![Piece { range: 0..len }]);
    }

    #[test]
    fn long_non_speech_is_skipped_and_short_pauses_are_kept() {
        // Speech 0-5 s, music (non-speech) 5-305 s, speech 305-310 s; a 1 s pause at 2 s.
        let p = probs(310.0, &[(2.0, 1.0), (5.0, 300.0)]);
        let pieces = plan(secs(310.0), &p);
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        let s = |x: usize| x as f64 / RATE as f64;
        assert!(s(pieces[0].range.start) == 0.0 && (s(pieces[0].range.end) - 5.4).abs() < 0.05);
        assert!((s(pieces[1].range.start) - 304.6).abs() < 0.05);
        assert_eq!(pieces[1].range.end, secs(310.0));
        // Nothing but non-speech: nothing to transcribe; a blip shorter than MIN_SPEECH too.
        assert!(plan(secs(30.0), &vec![0.02; chunks(30.0)]).is_empty());
        let mut blip = vec![0.02; chunks(30.0)];
        blip[100..104].fill(0.9);
        assert!(plan(secs(30.0), &blip).is_empty());
        assert!(plan(0, &[]).is_empty());
    }

    #[test]
    fn runs_use_hysteresis() {
        // 0.4 neither starts nor ends speech.
        let p = [0.1, 0.6, 0.4, 0.4, 0.2, 0.4, 0.7, 0.9];
        assert_eq!(speech_runs(&p), vec![1..4, 6..8]);
    }
}
