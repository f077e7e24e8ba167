//! Thumbnail benchmark: our pipeline vs the `ffmpeg` CLI doing the same job.
//!
//! Run: `cargo bench -p morag-agent --bench thumbnails` (optionally `-- VIDEO` to use your own
//! file). Without an argument it makes a 30 s 1280x720 H.264 clip with the ffmpeg CLI.
//!
//! Jobs compared (median of `RUNS` runs each, wall clock):
//! 1. 5 thumbnails 320x240 JPEG, keyframes off (MoRAG's default): our `process_video` with
//!    audio extraction off, vs MoRAG's way, one `ffmpeg -ss T -i IN -vf scale=320:240
//!    -frames:v 1` process per thumbnail.
//! 2. Scene keyframes (threshold 0.3): our sequential pass vs
//!    `ffmpeg -i IN -vf "select='gt(scene,0.3)',scale=320:240" -vsync vfr`.
//! 3. The same with the CUDA engine when a GPU is present ("no GPU" otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use morag_agent::gpu::{self, Engine, GpuConfig};
use morag_agent::media::video::{process_video, thumbnail_times, VideoOptions};
use morag_agent::media::{Cancel, NoProgress};

const RUNS: usize = 5;

fn ffmpeg(args: &[&str]) {
    let st = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg CLI");
    assert!(st.success(), "ffmpeg {args:?}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_runs(mut f: impl FnMut()) -> Duration {
    f(); // warm-up (page cache, kernel compilation)
    median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn ours(video: &Path, out: &Path, engine: &Engine, keyframes: bool) -> usize {
    let opts = VideoOptions {
        extract_audio: false,
        extract_keyframes: keyframes,
        generate_thumbnails: !keyframes,
        engine: engine.clone(),
        ..VideoOptions::default()
    };
    let r = process_video(video, &opts, &NoProgress, &Cancel::new(), out).expect("process");
    r.artifacts.len()
}

fn cli_thumbnails(video: &Path, out: &Path, duration: f64) {
    for (i, t) in thumbnail_times(duration, 5).iter().enumerate() {
        let ts = format!("{t:.3}");
        let dst = out.join(format!("cli_{i}.jpg"));
        ffmpeg(&[
            "-ss",
            &ts,
            "-i",
            video.to_str().unwrap(),
            "-vf",
            "scale=320:240",
            "-frames:v",
            "1",
            "-update",
            "1",
            dst.to_str().unwrap(),
        ]);
    }
}

fn cli_keyframes(video: &Path, out: &Path) {
    let pattern = out.join("cli_kf_%03d.jpg");
    ffmpeg(&[
        "-i",
        video.to_str().unwrap(),
        "-vf",
        "select='gt(scene,0.3)',scale=320:240",
        "-vsync",
        "vfr",
        "-frames:v",
        "10",
        pattern.to_str().unwrap(),
    ]);
}

fn duration_of(video: &Path) -> f64 {
    ffmpeg_next::init().ok();
    let ictx = ffmpeg_next::format::input(video).expect("open video");
    ictx.duration() as f64 / 1e6
}

fn make_clip(dir: &Path) -> PathBuf {
    let p = dir.join("bench_720p.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=25:duration=10",
        "-f",
        "lavfi",
        "-i",
        "smptehdbars=size=1280x720:rate=25:duration=10",
        "-f",
        "lavfi",
        "-i",
        "mandelbrot=size=1280x720:rate=25",
        "-filter_complex",
        "[2:v]trim=duration=10,setpts=PTS-STARTPTS[m];[0:v][1:v][m]concat=n=3:v=1:a=0[v]",
        "-map",
        "[v]",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        p.to_str().unwrap(),
    ]);
    p
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "thumbnails: a benchmark; run it with `cargo bench -p morag-agent --bench thumbnails`"
        );
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let video = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| make_clip(work.path()));
    let duration = duration_of(&video);
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    println!(
        "video: {} ({duration:.1} s); median of {RUNS} runs after one warm-up",
        video.display()
    );

    let cpu = Engine::Cpu;
    let ours_thumbs = time_runs(|| {
        assert_eq!(ours(&video, &out, &cpu, false), 5);
    });
    let cli_thumbs = time_runs(|| cli_thumbnails(&video, &out, duration));
    println!(
        "5 thumbnails 320x240: ours (cpu) {:.1} ms, ffmpeg CLI x5 {:.1} ms, ratio cli/ours {:.2}",
        ms(ours_thumbs),
        ms(cli_thumbs),
        cli_thumbs.as_secs_f64() / ours_thumbs.as_secs_f64()
    );

    let mut found = 0;
    let ours_kf = time_runs(|| found = ours(&video, &out, &cpu, true));
    let cli_kf = time_runs(|| cli_keyframes(&video, &out));
    let cli_found = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .map(|e| e.file_name().to_string_lossy().starts_with("cli_kf_"))
                .unwrap_or(false)
        })
        .count();
    println!(
        "scene keyframes (0.3): ours (cpu) {:.1} ms ({found} files), ffmpeg CLI {:.1} ms ({cli_found} files), ratio cli/ours {:.2}",
        ms(ours_kf),
        ms(cli_kf),
        cli_kf.as_secs_f64() / ours_kf.as_secs_f64()
    );

    match gpu::select(&GpuConfig::default()) {
        Engine::Cpu => println!("gpu vs cpu: no GPU (no CUDA driver on this machine)"),
        gpu_engine => {
            let g_thumbs = time_runs(|| {
                ours(&video, &out, &gpu_engine, false);
            });
            let g_kf = time_runs(|| {
                ours(&video, &out, &gpu_engine, true);
            });
            println!(
                "gpu vs cpu: thumbnails {:.1} ms vs {:.1} ms; keyframes {:.1} ms vs {:.1} ms",
                ms(g_thumbs),
                ms(ours_thumbs),
                ms(g_kf),
                ms(ours_kf)
            );
        }
    }
    if let Ok(keep) = std::env::var("BENCH_KEEP") {
        for e in std::fs::read_dir(&out).unwrap().flatten() {
            let _ = std::fs::copy(e.path(), Path::new(&keep).join(e.file_name()));
        }
    }
}
