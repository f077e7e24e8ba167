//! CPU frame operations: pixel format conversion, bilinear resize, scene-change scoring and
//! JPEG encoding.
//!
//! These are the reference implementations: the CUDA engine in [`crate::gpu`] runs the same
//! integer arithmetic and its output is compared against these functions bit for bit.
//!
//! # Arithmetic
//! - YUV -> RGB is BT.601 in 8.8 fixed point, limited range (16..235) or full range (JPEG).
//!   Chroma is sampled nearest (the 2x2 block's sample), as swscale's fast path does.
//! - RGB -> luma is BT.601 full range: `(77 R + 150 G + 29 B + 128) >> 8`.
//! - Resize is bilinear with pixel centres aligned (`src = (dst + 0.5) * scale - 0.5`), weights in
//!   1/256 steps, rounded once at the end. Before the bilinear step, 2x2 box halving runs while
//!   the source is at least twice the target in both axes, so large downscales do not alias.
//! - The scene score of two luma frames is `max(1 - correl(hist_a, hist_b), mad)` where `correl`
//!   is OpenCV's `HISTCMP_CORREL` of the luma histograms (32 bins) and `mad` the mean absolute pixel
//!   difference over 255. MoRAG's OpenCV path marks a scene change when `correl < 1 - 0.3`, so
//!   its threshold of 0.3 means the same here; `mad` adds cuts between frames whose histograms
//!   look alike (a pattern replaced by its mirror image).

mod jpeg;
mod score;

pub use jpeg::encode_jpeg;
pub use score::{
    fold_histogram, histogram_correlation, luma_histogram, mean_abs_diff, scene_correlation,
    scene_score, scene_score_from, SCENE_BINS,
};

/// Why a frame operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A plane is smaller than its width, height and stride say.
    #[error("plane {plane} holds {len} bytes, {needed} needed for {width}x{height}")]
    ShortPlane {
        plane: &'static str,
        len: usize,
        needed: usize,
        width: u32,
        height: u32,
    },
    /// A width or height is zero or beyond what the operation supports.
    #[error("bad dimensions {width}x{height}: {reason}")]
    Dimensions {
        width: u32,
        height: u32,
        reason: &'static str,
    },
    /// Two frames compared have different sizes.
    #[error("frames differ in size: {0}x{1} vs {2}x{3}")]
    SizeMismatch(u32, u32, u32, u32),
    /// The JPEG encoder failed (usually: the output path cannot be written).
    #[error("jpeg encoding failed: {0}")]
    Jpeg(String),
}

/// A packed RGB24 image, rows of `width * 3` bytes without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// An 8-bit single-channel image, rows of `width` bytes without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LumaImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// One plane of a decoded frame: its bytes and the distance between rows.
#[derive(Debug, Clone, Copy)]
pub struct Plane<'a> {
    pub data: &'a [u8],
    pub stride: usize,
}

/// How chroma is laid out in a 4:2:0 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChromaLayout {
    /// Separate U and V planes (YUV420P, YUVJ420P).
    Planar,
    /// One plane of interleaved U,V pairs (NV12); `v` is ignored.
    Interleaved,
}

/// Whether luma spans 16..235 (video) or 0..255 (JPEG, "yuvj").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorRange {
    Limited,
    Full,
}

/// A borrowed 4:2:0 frame as a decoder hands it over.
#[derive(Debug, Clone, Copy)]
pub struct YuvFrame<'a> {
    pub width: u32,
    pub height: u32,
    pub y: Plane<'a>,
    pub u: Plane<'a>,
    pub v: Plane<'a>,
    pub layout: ChromaLayout,
    pub range: ColorRange,
}

impl YuvFrame<'_> {
    /// Check that every plane holds what width, height and strides promise.
    pub fn validate(&self) -> Result<(), FrameError> {
        check_dims(self.width, self.height)?;
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let chroma_row = match self.layout {
            ChromaLayout::Planar => cw,
            ChromaLayout::Interleaved => cw * 2,
        };
        check_plane("y", self.y, w, h, self.width, self.height)?;
        check_plane("u", self.u, chroma_row, ch, self.width, self.height)?;
        if self.layout == ChromaLayout::Planar {
            check_plane("v", self.v, cw, ch, self.width, self.height)?;
        }
        Ok(())
    }
}

/// Largest side any operation accepts (JPEG's own limit is 65,535).
pub const MAX_SIDE: u32 = 16_384;

pub(crate) fn check_dims(width: u32, height: u32) -> Result<(), FrameError> {
    if width == 0 || height == 0 {
        return Err(FrameError::Dimensions {
            width,
            height,
            reason: "zero-sized",
        });
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(FrameError::Dimensions {
            width,
            height,
            reason: "larger than 16384 pixels",
        });
    }
    Ok(())
}

fn check_plane(
    plane: &'static str,
    p: Plane<'_>,
    row: usize,
    rows: usize,
    width: u32,
    height: u32,
) -> Result<(), FrameError> {
    let needed = if rows == 0 {
        0
    } else {
        p.stride * (rows - 1) + row
    };
    if p.stride < row || p.data.len() < needed {
        return Err(FrameError::ShortPlane {
            plane,
            len: p.data.len(),
            needed,
            width,
            height,
        });
    }
    Ok(())
}

#[inline]
fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// BT.601 YUV -> RGB of one pixel in 8.8 fixed point (the GPU kernel uses the same formula).
#[inline]
pub fn yuv_to_rgb_pixel(y: u8, u: u8, v: u8, range: ColorRange) -> [u8; 3] {
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    match range {
        ColorRange::Limited => {
            let c = 298 * (i32::from(y) - 16);
            [
                clamp_u8((c + 409 * e + 128) >> 8),
                clamp_u8((c - 100 * d - 208 * e + 128) >> 8),
                clamp_u8((c + 516 * d + 128) >> 8),
            ]
        }
        ColorRange::Full => {
            let c = 256 * i32::from(y);
            [
                clamp_u8((c + 359 * e + 128) >> 8),
                clamp_u8((c - 88 * d - 183 * e + 128) >> 8),
                clamp_u8((c + 454 * d + 128) >> 8),
            ]
        }
    }
}

/// Convert a 4:2:0 frame (YUV420P or NV12) to packed RGB24.
pub fn yuv420_to_rgb(frame: &YuvFrame<'_>) -> Result<RgbImage, FrameError> {
    frame.validate()?;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut out = vec![0u8; w * h * 3];
    for (row, out_row) in out.chunks_exact_mut(w * 3).enumerate() {
        let y_row = &frame.y.data[row * frame.y.stride..][..w];
        let crow = row / 2;
        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (u, v) = match frame.layout {
                ChromaLayout::Planar => (
                    frame.u.data[crow * frame.u.stride + x / 2],
                    frame.v.data[crow * frame.v.stride + x / 2],
                ),
                ChromaLayout::Interleaved => {
                    let base = crow * frame.u.stride + (x / 2) * 2;
                    (frame.u.data[base], frame.u.data[base + 1])
                }
            };
            px.copy_from_slice(&yuv_to_rgb_pixel(y_row[x], u, v, frame.range));
        }
    }
    Ok(RgbImage {
        width: frame.width,
        height: frame.height,
        data: out,
    })
}

/// Copy a packed RGB24 plane with row padding into an [`RgbImage`].
pub fn rgb_from_plane(width: u32, height: u32, plane: Plane<'_>) -> Result<RgbImage, FrameError> {
    check_dims(width, height)?;
    let row = width as usize * 3;
    check_plane("rgb", plane, row, height as usize, width, height)?;
    let mut data = Vec::with_capacity(row * height as usize);
    for r in 0..height as usize {
        data.extend_from_slice(&plane.data[r * plane.stride..][..row]);
    }
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// Copy an 8-bit plane with row padding (the Y plane of a YUV frame) into a [`LumaImage`].
pub fn luma_from_plane(width: u32, height: u32, plane: Plane<'_>) -> Result<LumaImage, FrameError> {
    check_dims(width, height)?;
    check_plane("y", plane, width as usize, height as usize, width, height)?;
    let mut data = Vec::with_capacity(width as usize * height as usize);
    for r in 0..height as usize {
        data.extend_from_slice(&plane.data[r * plane.stride..][..width as usize]);
    }
    Ok(LumaImage {
        width,
        height,
        data,
    })
}

/// BT.601 luma of an RGB image.
pub fn rgb_to_luma(img: &RgbImage) -> LumaImage {
    let data = img
        .data
        .chunks_exact(3)
        .map(|p| {
            ((77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2]) + 128) >> 8) as u8
        })
        .collect();
    LumaImage {
        width: img.width,
        height: img.height,
        data,
    }
}

/// Halve an interleaved image with 2x2 box averaging (odd last row/column dropped).
pub fn box_halve(src: &[u8], width: u32, height: u32, channels: usize) -> (Vec<u8>, u32, u32) {
    let (ow, oh) = ((width / 2).max(1), (height / 2).max(1));
    let (sw, sh) = (width as usize, height as usize);
    let mut out = vec![0u8; ow as usize * oh as usize * channels];
    for oy in 0..oh as usize {
        let y0 = (oy * 2).min(sh - 1);
        let y1 = (oy * 2 + 1).min(sh - 1);
        for ox in 0..ow as usize {
            let x0 = (ox * 2).min(sw - 1);
            let x1 = (ox * 2 + 1).min(sw - 1);
            for c in 0..channels {
                let s = u32::from(src[(y0 * sw + x0) * channels + c])
                    + u32::from(src[(y0 * sw + x1) * channels + c])
                    + u32::from(src[(y1 * sw + x0) * channels + c])
                    + u32::from(src[(y1 * sw + x1) * channels + c]);
                out[(oy * ow as usize + ox) * channels + c] = ((s + 2) >> 2) as u8;
            }
        }
    }
    (out, ow, oh)
}

/// Source coordinate of destination index `d` in 1/256 pixel, clamped to the image.
#[inline]
pub fn src_coord_fp(d: u32, src: u32, dst: u32) -> u32 {
    let num = (2 * u64::from(d) + 1) * u64::from(src) * 256;
    let pos = (num / (2 * u64::from(dst))) as i64 - 128;
    pos.clamp(0, i64::from(src - 1) * 256) as u32
}

/// Bilinear resize of an interleaved image with `channels` bytes per pixel (no box halving).
pub fn bilinear(
    src: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    dst_w: u32,
    dst_h: u32,
) -> Vec<u8> {
    let sw = width as usize;
    let mut out = vec![0u8; dst_w as usize * dst_h as usize * channels];
    let xs: Vec<(usize, usize, u32)> = (0..dst_w)
        .map(|dx| {
            let fp = src_coord_fp(dx, width, dst_w);
            let x0 = (fp >> 8) as usize;
            (x0, (x0 + 1).min(sw - 1), fp & 255)
        })
        .collect();
    for dy in 0..dst_h as usize {
        let fp = src_coord_fp(dy as u32, height, dst_h);
        let y0 = (fp >> 8) as usize;
        let y1 = (y0 + 1).min(height as usize - 1);
        let fy = fp & 255;
        let out_row = &mut out[dy * dst_w as usize * channels..][..dst_w as usize * channels];
        for (dx, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..channels {
                let p = |x: usize, y: usize| u32::from(src[(y * sw + x) * channels + c]);
                let top = p(x0, y0) * (256 - fx) + p(x1, y0) * fx;
                let bottom = p(x0, y1) * (256 - fx) + p(x1, y1) * fx;
                out_row[dx * channels + c] = ((top * (256 - fy) + bottom * fy + 32768) >> 16) as u8;
            }
        }
    }
    out
}

/// The sizes box halving goes through before the bilinear step of a resize.
pub fn halving_steps(mut w: u32, mut h: u32, dst_w: u32, dst_h: u32) -> Vec<(u32, u32)> {
    let mut steps = Vec::new();
    while w >= dst_w * 2 && h >= dst_h * 2 && w >= 2 && h >= 2 {
        w /= 2;
        h /= 2;
        steps.push((w, h));
    }
    steps
}

fn resize_interleaved(
    src: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    dst_w: u32,
    dst_h: u32,
) -> Result<Vec<u8>, FrameError> {
    check_dims(width, height)?;
    check_dims(dst_w, dst_h)?;
    if (width, height) == (dst_w, dst_h) {
        return Ok(src.to_vec());
    }
    let mut cur = std::borrow::Cow::Borrowed(src);
    let (mut w, mut h) = (width, height);
    for _ in halving_steps(width, height, dst_w, dst_h) {
        let (next, nw, nh) = box_halve(&cur, w, h, channels);
        cur = std::borrow::Cow::Owned(next);
        (w, h) = (nw, nh);
    }
    if (w, h) == (dst_w, dst_h) {
        return Ok(cur.into_owned());
    }
    Ok(bilinear(&cur, w, h, channels, dst_w, dst_h))
}

/// Resize an RGB image (box halving, then bilinear).
pub fn resize_rgb(img: &RgbImage, dst_w: u32, dst_h: u32) -> Result<RgbImage, FrameError> {
    let data = resize_interleaved(&img.data, img.width, img.height, 3, dst_w, dst_h)?;
    Ok(RgbImage {
        width: dst_w,
        height: dst_h,
        data,
    })
}

/// Resize a luma image (box halving, then bilinear).
pub fn resize_luma(img: &LumaImage, dst_w: u32, dst_h: u32) -> Result<LumaImage, FrameError> {
    let data = resize_interleaved(&img.data, img.width, img.height, 1, dst_w, dst_h)?;
    Ok(LumaImage {
        width: dst_w,
        height: dst_h,
        data,
    })
}

/// Source span `[start, end)` of output index `d` when `src` pixels shrink to `dst`.
#[inline]
pub fn area_span(d: u32, src: u32, dst: u32) -> (usize, usize) {
    let start = (u64::from(d) * u64::from(src) / u64::from(dst)) as usize;
    let end = (u64::from(d + 1) * u64::from(src) / u64::from(dst)) as usize;
    (start, end.max(start + 1))
}

/// Area-average downscale of an 8-bit plane straight from the decoder's buffer: each output
/// pixel is the rounded mean of its source block. Cheaper than [`resize_luma`] for the large
/// shrink factors of scene analysis; upscales (`dw > width`) fall back to [`resize_luma`].
pub fn luma_area(
    plane: Plane<'_>,
    width: u32,
    height: u32,
    dw: u32,
    dh: u32,
) -> Result<LumaImage, FrameError> {
    check_dims(width, height)?;
    check_dims(dw, dh)?;
    check_plane("y", plane, width as usize, height as usize, width, height)?;
    if dw > width || dh > height {
        return resize_luma(&luma_from_plane(width, height, plane)?, dw, dh);
    }
    let xs: Vec<(usize, usize)> = (0..dw).map(|d| area_span(d, width, dw)).collect();
    let mut data = vec![0u8; dw as usize * dh as usize];
    let mut sums = vec![0u32; dw as usize];
    for (dy, out_row) in data.chunks_exact_mut(dw as usize).enumerate() {
        let (y0, y1) = area_span(dy as u32, height, dh);
        sums.iter_mut().for_each(|s| *s = 0);
        for y in y0..y1 {
            let row = &plane.data[y * plane.stride..][..width as usize];
            for (sum, &(x0, x1)) in sums.iter_mut().zip(&xs) {
                *sum += row[x0..x1].iter().map(|&p| u32::from(p)).sum::<u32>();
            }
        }
        for ((o, &sum), &(x0, x1)) in out_row.iter_mut().zip(&sums).zip(&xs) {
            let n = ((x1 - x0) * (y1 - y0)) as u32;
            *o = ((sum + n / 2) / n) as u8;
        }
    }
    Ok(LumaImage {
        width: dw,
        height: dh,
        data,
    })
}

/// The largest size with the source's aspect ratio that fits in `max_w` x `max_h`, never
/// larger than the source.
pub fn fit_within(width: u32, height: u32, max_w: u32, max_h: u32) -> (u32, u32) {
    if width <= max_w && height <= max_h {
        return (width.max(1), height.max(1));
    }
    let scale = f64::min(
        f64::from(max_w) / f64::from(width),
        f64::from(max_h) / f64::from(height),
    );
    let w = (f64::from(width) * scale).round().max(1.0) as u32;
    let h = (f64::from(height) * scale).round().max(1.0) as u32;
    (w.min(max_w), h.min(max_h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(data: &[u8], stride: usize) -> Plane<'_> {
        Plane { data, stride }
    }

    #[test]
    fn limited_range_primaries_convert_to_rgb() {
        // BT.601 limited-range codes of black, white, red, green and blue.
        assert_eq!(
            yuv_to_rgb_pixel(16, 128, 128, ColorRange::Limited),
            [0, 0, 0]
        );
        assert_eq!(
            yuv_to_rgb_pixel(235, 128, 128, ColorRange::Limited),
            [255, 255, 255]
        );
        let red = yuv_to_rgb_pixel(81, 90, 240, ColorRange::Limited);
        assert!(red[0] >= 253 && red[1] <= 2 && red[2] <= 2, "{red:?}");
        let green = yuv_to_rgb_pixel(145, 54, 34, ColorRange::Limited);
        assert!(
            green[0] <= 2 && green[1] >= 253 && green[2] <= 2,
            "{green:?}"
        );
        let blue = yuv_to_rgb_pixel(41, 240, 110, ColorRange::Limited);
        assert!(blue[0] <= 2 && blue[1] <= 2 && blue[2] >= 253, "{blue:?}");
    }

    #[test]
    fn full_range_grey_is_identity() {
        for y in [0u8, 1, 77, 128, 254, 255] {
            assert_eq!(yuv_to_rgb_pixel(y, 128, 128, ColorRange::Full), [y, y, y]);
        }
    }

    #[test]
    fn planar_and_nv12_agree_and_respect_strides() {
        // 4x2 image, Y stride 6 (padding), chroma 2x1.
        let y = [16, 235, 16, 235, 0, 0, 235, 16, 235, 16, 0, 0];
        let u = [90, 54, 9];
        let v = [240, 34, 9];
        let uv = [90, 240, 54, 34];
        let planar = YuvFrame {
            width: 4,
            height: 2,
            y: plane(&y, 6),
            u: plane(&u, 3),
            v: plane(&v, 3),
            layout: ChromaLayout::Planar,
            range: ColorRange::Limited,
        };
        let nv12 = YuvFrame {
            u: plane(&uv, 4),
            v: plane(&[], 0),
            layout: ChromaLayout::Interleaved,
            ..planar
        };
        let a = yuv420_to_rgb(&planar).unwrap();
        let b = yuv420_to_rgb(&nv12).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.data.len(), 4 * 2 * 3);
        // Pixel (1,0): Y=235 with red chroma -> saturated red-ish, brighter than pixel (0,0).
        assert!(a.data[3] > a.data[0]);
    }

    #[test]
    fn short_planes_are_errors_not_panics() {
        let y = [0u8; 10];
        let f = YuvFrame {
            width: 4,
            height: 4,
            y: plane(&y, 4),
            u: plane(&y, 2),
            v: plane(&y, 2),
            layout: ChromaLayout::Planar,
            range: ColorRange::Limited,
        };
        assert!(matches!(
            yuv420_to_rgb(&f),
            Err(FrameError::ShortPlane { plane: "y", .. })
        ));
    }

    #[test]
    fn luma_of_primaries() {
        let img = RgbImage {
            width: 4,
            height: 1,
            data: vec![255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, 0],
        };
        assert_eq!(rgb_to_luma(&img).data, vec![255, 0, 77, 149]);
    }

    #[test]
    fn bilinear_upscale_interpolates_midpoints() {
        // 2x1 [0, 200] -> 4x1: centres at -0.25, 0.25, 0.75, 1.25 -> 0, 50, 150, 200.
        let img = LumaImage {
            width: 2,
            height: 1,
            data: vec![0, 200],
        };
        assert_eq!(resize_luma(&img, 4, 1).unwrap().data, vec![0, 50, 150, 200]);
    }

    #[test]
    fn downscale_of_constant_image_is_constant() {
        let img = RgbImage {
            width: 1920,
            height: 1080,
            data: [10u8, 20, 30].repeat(1920 * 1080),
        };
        let small = resize_rgb(&img, 320, 240).unwrap();
        assert_eq!((small.width, small.height), (320, 240));
        assert!(small.data.chunks_exact(3).all(|p| p == [10, 20, 30]));
    }

    #[test]
    fn downscale_averages_a_checkerboard_to_grey() {
        let (w, h) = (64u32, 64u32);
        let data = (0..w * h)
            .map(|i| if (i % w + i / w) % 2 == 0 { 0 } else { 255 })
            .collect();
        let img = LumaImage {
            width: w,
            height: h,
            data,
        };
        let small = resize_luma(&img, 8, 8).unwrap();
        assert!(
            small.data.iter().all(|&p| (120..=135).contains(&p)),
            "{:?}",
            small.data
        );
    }

    #[test]
    fn halving_stops_before_undershooting() {
        assert_eq!(
            halving_steps(1920, 1080, 320, 240),
            vec![(960, 540), (480, 270)]
        );
        assert!(halving_steps(320, 240, 320, 240).is_empty());
    }

    #[test]
    fn area_downscale_averages_blocks() {
        // 4x2 -> 2x1: blocks [0,10,20,30] and [40,50,60,70] (stride 5 with padding).
        let data = [0, 10, 40, 50, 99, 20, 30, 60, 70, 99];
        let out = luma_area(plane(&data, 5), 4, 2, 2, 1).unwrap();
        assert_eq!(out.data, vec![15, 55]);
        // Uneven blocks still cover every pixel once.
        let grad: Vec<u8> = (0..=255).collect();
        let out = luma_area(plane(&grad, 16), 16, 16, 5, 3).unwrap();
        assert_eq!((out.width, out.height), (5, 3));
        assert!(out.data.windows(2).take(4).all(|w| w[0] < w[1]));
    }

    #[test]
    fn fit_within_keeps_aspect() {
        assert_eq!(fit_within(1920, 1080, 320, 240), (320, 180));
        assert_eq!(fit_within(100, 50, 320, 240), (100, 50));
        assert_eq!(fit_within(1000, 4000, 320, 240), (60, 240));
    }
}
