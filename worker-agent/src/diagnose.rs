//! `morag-agent gpu`: the box's GPUs as the agent sees them — each one used or not, and why
//! not (the same decision `serve` makes) — and with `--self-test` the frame kernels against
//! the CPU reference on each GPU the frame engine can open, and their thumbnail speed. Output:
//! markdown tables (scripts/gpu-check.sh prints them in its report).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::gpu::{self, devices};
use crate::hardware::HardwareFingerprint;

#[derive(Debug, Args)]
pub struct GpuArgs {
    /// Also check the frame kernels against the CPU on each GPU, and time thumbnails.
    #[arg(long)]
    pub self_test: bool,
    /// Thumbnails (1920x1080 to 320x180) timed on each device in the self-test.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub frames: usize,
    /// The Whisper model whose size decides whether a GPU has room
    /// [default: $MORAG_MODEL or models/ggml-tiny.en.bin].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
}

fn ms_each(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / n.max(1) as f64
}

/// Print the report; `Ok(false)` when a self-test found the GPU's output different from the
/// CPU's.
pub fn run(args: &GpuArgs) -> anyhow::Result<bool> {
    let selection: devices::Selection = match std::env::var("MORAG_REMOTE_GPU_DEVICES") {
        Ok(v) => v
            .parse()
            .map_err(|e| anyhow::anyhow!("MORAG_REMOTE_GPU_DEVICES: {e}"))?,
        Err(_) => devices::Selection::All,
    };
    let model = crate::models::default_model_path(args.model.as_deref());
    let model_bytes = std::fs::metadata(&model).map(|m| m.len()).unwrap_or(0);
    let facts = gpu::machine_facts(
        true,
        selection.clone(),
        model_bytes + devices::job_memory(model_bytes),
        None,
    );
    let hw = HardwareFingerprint::detect();
    let plan = devices::decide(&hw.gpus, &facts);
    let (major, minor) = facts.oldest_arch;
    if facts.cuda_build {
        println!(
            "this build: Whisper on CUDA {}.{} for compute capability {major}.{minor} and newer",
            gpu::BUILT_CUDA / 1000,
            gpu::BUILT_CUDA % 1000 / 10
        );
    } else {
        println!("this build: without CUDA (Whisper on the CPU; frame kernels on a GPU when one is found)");
    }
    match (&hw.driver_version, &hw.gpu_error) {
        (Some(d), _) => println!(
            "driver: {d} (CUDA {})",
            hw.cuda_version.as_deref().unwrap_or("?")
        ),
        (None, Some(e)) => println!("driver: none ({e})"),
        (None, None) => println!("driver: unknown"),
    }
    println!(
        "gpu_devices: {selection}; Whisper model {} ({:.0} MB)",
        model.display(),
        model_bytes as f64 / 1e6
    );
    for w in &plan.warnings {
        println!("warning: {w}");
    }
    println!();
    println!("| GPU | name | memory free / total | compute capability | used | why not |");
    println!("| --- | --- | --- | --- | --- | --- |");
    if plan.gpus.is_empty() {
        let why = hw.gpu_error.as_deref().unwrap_or("NVML lists no GPU");
        println!("| - | - | - | - | no | no GPU listed: {why} |");
    }
    for g in &plan.gpus {
        let i = &g.info;
        println!(
            "| {} | {} | {} / {} | {} | {} | {} |",
            i.index,
            i.name,
            i.memory_free_bytes.map_or("?".into(), devices::gb),
            devices::gb(i.memory_total_bytes),
            i.compute_capability.as_deref().unwrap_or("?"),
            if g.used.is_ok() { "yes" } else { "no" },
            g.used.as_ref().err().map_or("", String::as_str)
        );
    }
    if !args.self_test {
        return Ok(true);
    }
    println!();
    println!("| GPU | frame kernels = CPU reference | thumbnail, ms each (GPU / CPU) | speedup |");
    println!("| --- | --- | --- | --- |");
    if !gpu::cuda_driver_present() || hw.gpus.is_empty() {
        let why = hw
            .gpu_error
            .as_deref()
            .unwrap_or("no CUDA driver library (libcuda.so.1)");
        println!("| - | no GPU: skipped ({why}) | - | - |");
        return Ok(true);
    }
    let cpu = gpu::selftest::time_thumbnails(&gpu::Engine::Cpu, args.frames)
        .map_err(anyhow::Error::msg)?;
    let mut all_equal = true;
    for g in &hw.gpus {
        let engine = gpu::select(&gpu::GpuConfig {
            device: g.index as usize,
            ..Default::default()
        });
        if !engine.is_gpu() {
            println!(
                "| {} | skipped: the frame engine could not open it (see the log) | - | - |",
                g.index
            );
            continue;
        }
        let equal = match gpu::selftest::compare(&engine) {
            Ok(n) => format!("yes ({n} operations)"),
            Err(e) => {
                all_equal = false;
                format!("NO: {e}")
            }
        };
        match gpu::selftest::time_thumbnails(&engine, args.frames) {
            Ok(t) => println!(
                "| {} | {equal} | {:.3} / {:.3} | {:.1}x |",
                g.index,
                ms_each(t, args.frames),
                ms_each(cpu, args.frames),
                cpu.as_secs_f64() / t.as_secs_f64().max(1e-9)
            ),
            Err(e) => println!("| {} | {equal} | failed: {e} | - |", g.index),
        }
    }
    Ok(all_equal)
}
