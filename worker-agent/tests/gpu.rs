//! The device layer: CPU is what `select` returns without a CUDA driver, and the CUDA engine
//! (where present) gives the same bytes as the CPU reference.

use morag_agent::frames::{self, RgbImage};
use morag_agent::gpu::selftest::pattern;
use morag_agent::gpu::{self, Engine, GpuConfig};

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
    let checks = gpu::selftest::compare(engine).unwrap();
    eprintln!(
        "{checks} frame operations equal to the CPU's on {}",
        engine.name()
    );
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

/// `morag-agent gpu --self-test` on this machine: every GPU NVML lists has a row saying
/// whether it is used and why not; without one, the table says why none is listed and the
/// self-test is skipped with the reason. A bad `MORAG_REMOTE_GPU_DEVICES` is a clear error.
#[test]
fn the_gpu_command_says_what_is_used_and_why() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_morag-agent"))
        .args(["gpu", "--self-test", "--frames", "5"])
        .env_remove("MORAG_REMOTE_GPU_DEVICES")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("| GPU | name | memory free / total"),
        "{text}"
    );
    let listed = morag_agent::hardware::list_gpus();
    match listed {
        Ok(gpus) if !gpus.is_empty() => {
            for g in gpus {
                assert!(
                    text.contains(&format!("| {} | {} |", g.index, g.name)),
                    "{text}"
                );
            }
        }
        Ok(_) => assert!(text.contains("no GPU listed: NVML lists no GPU"), "{text}"),
        Err(e) => {
            assert!(text.contains(&format!("no GPU listed: {e}")), "{text}");
            assert!(text.contains("| - | no GPU: skipped ("), "{text}");
        }
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_morag-agent"))
        .arg("gpu")
        .env("MORAG_REMOTE_GPU_DEVICES", "first")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("MORAG_REMOTE_GPU_DEVICES: expected"), "{err}");
}
