//! The frame engine against the CPU reference on test patterns, and its thumbnail speed: what
//! `morag-agent gpu --self-test` prints on a GPU machine (scripts/gpu-check.sh) and what the
//! GPU test asserts.

use std::time::{Duration, Instant};

use super::Engine;
use crate::frames::{ChromaLayout, ColorRange, LumaImage, Plane, RgbImage, YuvFrame};

/// A deterministic byte pattern (xorshift; no RNG dependency).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

/// One frame's planes, planar and interleaved (NV12) chroma.
struct Planes {
    w: u32,
    h: u32,
    ys: usize,
    cw: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    uv: Vec<u8>,
}

impl Planes {
    fn new(w: u32, h: u32) -> Self {
        let (cw, ch) = (w.div_ceil(2) as usize, h.div_ceil(2) as usize);
        let ys = w as usize + 32;
        Self {
            w,
            h,
            ys,
            cw,
            y: pattern(ys * h as usize, 1),
            u: pattern(cw * ch, 2),
            v: pattern(cw * ch, 3),
            uv: pattern(cw * 2 * ch, 4),
        }
    }

    fn frame(&self, range: ColorRange, interleaved: bool) -> YuvFrame<'_> {
        let y = Plane {
            data: &self.y,
            stride: self.ys,
        };
        if interleaved {
            YuvFrame {
                width: self.w,
                height: self.h,
                y,
                u: Plane {
                    data: &self.uv,
                    stride: self.cw * 2,
                },
                v: Plane {
                    data: &[],
                    stride: 0,
                },
                layout: ChromaLayout::Interleaved,
                range,
            }
        } else {
            YuvFrame {
                width: self.w,
                height: self.h,
                y,
                u: Plane {
                    data: &self.u,
                    stride: self.cw,
                },
                v: Plane {
                    data: &self.v,
                    stride: self.cw,
                },
                layout: ChromaLayout::Planar,
                range,
            }
        }
    }
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, a: T, b: T) -> Result<(), String> {
    if a == b {
        Ok(())
    } else {
        Err(format!(
            "{what}: the engine's output differs from the CPU's"
        ))
    }
}

/// Every frame operation of `engine` against the CPU's on patterns of several sizes (odd
/// sizes, 1x1, both colour ranges, planar and NV12): `Ok(checks made)` when all are equal
/// (scene scores within 1e-12), else the first difference.
pub fn compare(engine: &Engine) -> Result<usize, String> {
    let cpu = Engine::Cpu;
    let err = |e: crate::frames::FrameError| e.to_string();
    let mut checks = 0;
    for &(w, h) in &[(640u32, 480u32), (1920, 1080), (33, 17), (1, 1)] {
        let planes = Planes::new(w, h);
        for range in [ColorRange::Limited, ColorRange::Full] {
            for interleaved in [false, true] {
                let f = planes.frame(range, interleaved);
                let what = format!("{w}x{h} {range:?} interleaved={interleaved}");
                same(
                    &format!("yuv420_to_rgb {what}"),
                    engine.yuv420_to_rgb(&f).map_err(err)?,
                    cpu.yuv420_to_rgb(&f).map_err(err)?,
                )?;
                same(
                    &format!("yuv420_to_rgb_resized {what}"),
                    engine.yuv420_to_rgb_resized(&f, 320, 240).map_err(err)?,
                    cpu.yuv420_to_rgb_resized(&f, 320, 240).map_err(err)?,
                )?;
                checks += 2;
            }
        }
        let rgb = RgbImage {
            width: w,
            height: h,
            data: pattern(w as usize * h as usize * 3, 5),
        };
        same(
            &format!("resize_rgb {w}x{h}"),
            engine.resize_rgb(&rgb, 97, 55).map_err(err)?,
            cpu.resize_rgb(&rgb, 97, 55).map_err(err)?,
        )?;
        let a = LumaImage {
            width: w,
            height: h,
            data: pattern(w as usize * h as usize, 6),
        };
        let b = LumaImage {
            data: pattern(w as usize * h as usize, 7),
            ..a.clone()
        };
        same(
            &format!("resize_luma {w}x{h}"),
            engine.resize_luma(&a, 80, 60).map_err(err)?,
            cpu.resize_luma(&a, 80, 60).map_err(err)?,
        )?;
        let (g, c) = (
            engine.scene_score(&a, &b).map_err(err)?,
            cpu.scene_score(&a, &b).map_err(err)?,
        );
        if (g - c).abs() >= 1e-12 {
            return Err(format!(
                "scene_score {w}x{h}: {g} on the engine, {c} on the CPU"
            ));
        }
        checks += 3;
    }
    Ok(checks)
}

/// Time `frames` thumbnails (a 1920x1080 frame to 320x180 RGB) on `engine`.
pub fn time_thumbnails(engine: &Engine, frames: usize) -> Result<Duration, String> {
    let planes = Planes::new(1920, 1080);
    let f = planes.frame(ColorRange::Limited, false);
    // One untimed: kernels compile and buffers are pooled on first use.
    engine
        .yuv420_to_rgb_resized(&f, 320, 180)
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    for _ in 0..frames {
        engine
            .yuv420_to_rgb_resized(&f, 320, 180)
            .map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_deterministic_and_thumbnails_are_timed_on_the_cpu() {
        assert_eq!(pattern(16, 3), pattern(16, 3));
        assert_ne!(pattern(16, 3), pattern(16, 4));
        let t = time_thumbnails(&Engine::Cpu, 2).unwrap();
        assert!(t > Duration::ZERO);
    }
}
