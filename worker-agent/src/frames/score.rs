//! Scene-change scoring of luma frames (see the parent module's docs for the formula).

use super::{FrameError, LumaImage};

/// 256-bin histogram of a luma image.
pub fn luma_histogram(img: &LumaImage) -> [u32; 256] {
    let mut hist = [0u32; 256];
    for &p in &img.data {
        hist[p as usize] += 1;
    }
    hist
}

/// Bins of the histograms the scene score correlates (256 levels folded 8 to a bin, so a
/// one-level brightness drift does not read as a new scene).
pub const SCENE_BINS: usize = 32;

/// Fold a 256-bin histogram into [`SCENE_BINS`] bins.
pub fn fold_histogram(h: &[u32; 256]) -> [u32; SCENE_BINS] {
    let mut out = [0u32; SCENE_BINS];
    for (i, &v) in h.iter().enumerate() {
        out[i / (256 / SCENE_BINS)] += v;
    }
    out
}

/// OpenCV's `HISTCMP_CORREL`: Pearson correlation of two histograms, 1.0 when either is flat.
pub fn histogram_correlation(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let mean_a = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let mean_b = b.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b.iter()) {
        let (x, y) = (f64::from(x) - mean_a, f64::from(y) - mean_b);
        num += x * y;
        da += x * x;
        db += y * y;
    }
    let denom = da * db;
    if denom.abs() > f64::EPSILON {
        num / denom.sqrt()
    } else {
        1.0
    }
}

/// Correlation of two 256-bin luma histograms as the scene score uses it (folded).
pub fn scene_correlation(a: &[u32; 256], b: &[u32; 256]) -> f64 {
    histogram_correlation(&fold_histogram(a), &fold_histogram(b))
}

/// Mean absolute difference of two equally sized luma images, over 255 (0.0 ..= 1.0).
pub fn mean_abs_diff(a: &LumaImage, b: &LumaImage) -> Result<f64, FrameError> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(FrameError::SizeMismatch(
            a.width, a.height, b.width, b.height,
        ));
    }
    let sum: u64 = a
        .data
        .iter()
        .zip(b.data.iter())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    Ok(sum as f64 / (a.data.len().max(1) as f64 * 255.0))
}

/// Combine the two measures into the scene score (see the module docs).
pub fn scene_score_from(correlation: f64, mad: f64) -> f64 {
    (1.0 - correlation).max(mad).clamp(0.0, 1.0)
}

/// Scene-change score of two equally sized luma frames, 0.0 (same) ..= 1.0 (unrelated).
pub fn scene_score(a: &LumaImage, b: &LumaImage) -> Result<f64, FrameError> {
    let mad = mean_abs_diff(a, b)?;
    let corr = scene_correlation(&luma_histogram(a), &luma_histogram(b));
    Ok(scene_score_from(corr, mad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scene_score_is_zero_for_same_and_high_for_cuts() {
        let grad = LumaImage {
            width: 16,
            height: 16,
            data: (0..256).map(|i| i as u8).collect(),
        };
        assert_eq!(scene_score(&grad, &grad).unwrap(), 0.0);
        // Same histogram, mirrored content: correlation 1, but pixels differ a lot.
        let mirrored = LumaImage {
            data: grad.data.iter().rev().copied().collect(),
            ..grad.clone()
        };
        assert!(scene_score(&grad, &mirrored).unwrap() > 0.3);
        // Black -> white: histograms unrelated.
        let black = LumaImage {
            width: 16,
            height: 16,
            data: vec![0; 256],
        };
        let white = LumaImage {
            data: vec![255; 256],
            ..black.clone()
        };
        assert!(scene_score(&black, &white).unwrap() > 0.99);
        // Slight brightness change: well under the 0.3 threshold.
        let grey = LumaImage {
            data: vec![100; 256],
            ..black.clone()
        };
        let grey2 = LumaImage {
            data: vec![101; 256],
            ..black
        };
        assert!(mean_abs_diff(&grey, &grey2).unwrap() < 0.01);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let a = LumaImage {
            width: 2,
            height: 2,
            data: vec![0; 4],
        };
        let b = LumaImage {
            width: 1,
            height: 4,
            data: vec![0; 4],
        };
        assert!(matches!(
            mean_abs_diff(&a, &b),
            Err(FrameError::SizeMismatch(..))
        ));
    }
}
