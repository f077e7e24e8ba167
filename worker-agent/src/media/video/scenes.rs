//! Scene-change detection over a stream of downscaled luma frames.
//!
//! A frame starts a new scene when its [`Engine::scene_score`] against the previous frame
//! exceeds the threshold (MoRAG's default 0.3) and at least `min_gap` seconds passed since the
//! last detected change (PySceneDetect's minimum scene length, which keeps a flash or a
//! dissolve from yielding a burst of keyframes). The first frame is not a change.

use crate::frames::{FrameError, LumaImage};
use crate::gpu::Engine;

/// Side of the luma frames the detector compares (80x60: cheap, and enough for cuts).
pub const ANALYSIS_SIZE: (u32, u32) = (80, 60);

/// Detects cuts in a sequence of equally sized luma frames.
#[derive(Debug)]
pub struct SceneDetector {
    threshold: f64,
    min_gap: f64,
    prev: Option<LumaImage>,
    last_cut: Option<f64>,
}

impl SceneDetector {
    pub fn new(threshold: f64, min_gap: f64) -> Self {
        Self {
            threshold,
            min_gap,
            prev: None,
            last_cut: None,
        }
    }

    /// Feed the frame shown at `time` seconds; returns its score when it starts a new scene.
    pub fn push(
        &mut self,
        engine: &Engine,
        luma: LumaImage,
        time: f64,
    ) -> Result<Option<f64>, FrameError> {
        let Some(prev) = self.prev.replace(luma) else {
            return Ok(None);
        };
        let cur = self.prev.as_ref().unwrap_or(&prev);
        let score = engine.scene_score(&prev, cur)?;
        let gap_ok = self.last_cut.is_none_or(|t| time - t >= self.min_gap);
        if score > self.threshold && gap_ok {
            self.last_cut = Some(time);
            return Ok(Some(score));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: u8) -> LumaImage {
        LumaImage {
            width: 8,
            height: 8,
            data: vec![v; 64],
        }
    }

    #[test]
    fn finds_cuts_and_respects_the_gap() {
        let mut d = SceneDetector::new(0.3, 0.5);
        let e = Engine::Cpu;
        let frames = [
            (0.0, 10),
            (0.1, 11),
            (0.2, 200), // cut
            (0.3, 10),  // too close to the last cut
            (1.0, 10),
            (1.1, 128), // cut
        ];
        let cuts: Vec<f64> = frames
            .iter()
            .filter_map(|&(t, v)| d.push(&e, flat(v), t).unwrap().map(|_| t))
            .collect();
        assert_eq!(cuts, vec![0.2, 1.1]);
    }
}
