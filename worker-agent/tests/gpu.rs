//! The device layer: CPU is what `select` returns without a CUDA driver, and the CUDA engine
//! (where present) gives the same bytes as the CPU reference.

use morag_agent::gpu::{self, Engine, GpuConfig};
use morag_agent::media::frames::{
    self, ChromaLayout, ColorRange, LumaImage, Plane, RgbImage, YuvFrame,
};

/// A deterministic pattern (no RNG dependency).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
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

#[test]
fn select_reports_cpu_when_no_cuda_driver() {
    let engine = gpu::select(&GpuConfig::default());
    if gpu::cuda_driver_present() {
        eprintln!("CUDA driver present: engine {}", engine.name());
    } else {
        assert!(
            matches!(engine, Engine::Cpu),
            "no driver, yet {}",
            engine.name()
        );
        eprintln!("no CUDA driver here: select() chose the CPU engine");
    }
}

#[test]
fn gpu_output_equals_cpu_output() {
    let engine = gpu::select(&GpuConfig::default());
    if !engine.is_gpu() {
        eprintln!("GPU comparison did not run: no CUDA driver");
        return;
    }
    compare(&engine);
    // A tiny pool limit forces the CPU fallback; results must not change.
    let starved = gpu::select(&GpuConfig {
        memory_limit_bytes: 4096,
        ..GpuConfig::default()
    });
    compare(&starved);
}

fn compare(engine: &Engine) {
    let cpu = Engine::Cpu;
    for &(w, h) in &[(640u32, 480u32), (1920, 1080), (33, 17), (1, 1)] {
        let (cw, ch) = (w.div_ceil(2) as usize, h.div_ceil(2) as usize);
        let ys = w as usize + 32;
        let y = pattern(ys * h as usize, 1);
        let u = pattern(cw * ch, 2);
        let v = pattern(cw * ch, 3);
        let uv = pattern(cw * 2 * ch, 4);
        for range in [ColorRange::Limited, ColorRange::Full] {
            let planar = YuvFrame {
                width: w,
                height: h,
                y: Plane {
                    data: &y,
                    stride: ys,
                },
                u: Plane {
                    data: &u,
                    stride: cw,
                },
                v: Plane {
                    data: &v,
                    stride: cw,
                },
                layout: ChromaLayout::Planar,
                range,
            };
            let nv12 = YuvFrame {
                u: Plane {
                    data: &uv,
                    stride: cw * 2,
                },
                v: Plane {
                    data: &[],
                    stride: 0,
                },
                layout: ChromaLayout::Interleaved,
                ..planar
            };
            for f in [&planar, &nv12] {
                assert_eq!(
                    engine.yuv420_to_rgb(f).unwrap(),
                    cpu.yuv420_to_rgb(f).unwrap()
                );
                assert_eq!(
                    engine.yuv420_to_rgb_resized(f, 320, 240).unwrap(),
                    cpu.yuv420_to_rgb_resized(f, 320, 240).unwrap(),
                    "{w}x{h} {range:?}"
                );
            }
        }
        let rgb = RgbImage {
            width: w,
            height: h,
            data: pattern(w as usize * h as usize * 3, 5),
        };
        assert_eq!(
            engine.resize_rgb(&rgb, 97, 55).unwrap(),
            cpu.resize_rgb(&rgb, 97, 55).unwrap()
        );
        let a = LumaImage {
            width: w,
            height: h,
            data: pattern(w as usize * h as usize, 6),
        };
        let b = LumaImage {
            data: pattern(w as usize * h as usize, 7),
            ..a.clone()
        };
        assert_eq!(
            engine.resize_luma(&a, 80, 60).unwrap(),
            cpu.resize_luma(&a, 80, 60).unwrap()
        );
        let (g, c) = (
            engine.scene_score(&a, &b).unwrap(),
            cpu.scene_score(&a, &b).unwrap(),
        );
        assert!((g - c).abs() < 1e-12, "{g} vs {c}");
    }
}

#[test]
fn cpu_engine_is_the_frames_module() {
    let img = RgbImage {
        width: 64,
        height: 48,
        data: pattern(64 * 48 * 3, 9),
    };
    assert_eq!(
        Engine::Cpu.resize_rgb(&img, 20, 10).unwrap(),
        frames::resize_rgb(&img, 20, 10).unwrap()
    );
}
