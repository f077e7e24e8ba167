//! Test media made with the `ffmpeg` CLI at test time (shared by the video, image and GPU
//! tests). Each fixture is made once per test binary into a temporary folder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Run the ffmpeg CLI quietly; panics with its stderr when it fails.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("the ffmpeg CLI is needed to make test media (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The folder holding this binary's fixtures.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

fn once(cell: &'static OnceLock<PathBuf>, name: &str, make: impl FnOnce(&Path)) -> PathBuf {
    cell.get_or_init(|| {
        let p = dir().join(name);
        make(&p);
        p
    })
    .clone()
}

/// Frames per second of the cut video.
pub const FPS: f64 = 25.0;
/// Where the cut video changes scene.
pub const CUTS: [f64; 2] = [2.0, 4.0];

/// 6 s, 640x480 at 25 fps, H.264 + AAC (440 Hz sine) in MP4: testsrc (0-2 s), SMPTE bars
/// (2-4 s), mandelbrot (4-6 s).
#[rustfmt::skip]
pub fn cut_video() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    once(&P, "cuts.mp4", |p| {
        ffmpeg(&[
            "-f", "lavfi", "-i", "testsrc=size=640x480:rate=25:duration=2",
            "-f", "lavfi", "-i", "smptebars=size=640x480:rate=25:duration=2",
            "-f", "lavfi", "-i", "mandelbrot=size=640x480:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=6",
            "-filter_complex",
            "[2:v]trim=duration=2,setpts=PTS-STARTPTS[m];[0:v][1:v][m]concat=n=3:v=1:a=0[v]",
            "-map", "[v]", "-map", "3:a",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "96k",
            "-metadata", "creation_time=2024-05-06T07:08:09Z",
            p.to_str().unwrap(),
        ])
    })
}

/// 3 s MPEG-4 part 2 in Matroska with an MP3 track at 64 kbit/s (for stream copy).
#[rustfmt::skip]
pub fn mp3_video() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    once(&P, "mp3track.mkv", |p| {
        ffmpeg(&[
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=3",
            "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=44100:duration=3",
            "-c:v", "mpeg4", "-q:v", "5", "-c:a", "libmp3lame", "-b:a", "64k",
            p.to_str().unwrap(),
        ])
    })
}

/// 2 s video without audio (VP-free: MPEG-4 in AVI).
#[rustfmt::skip]
pub fn silent_video() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    once(&P, "silent.avi", |p| {
        ffmpeg(&[
            "-f", "lavfi", "-i", "testsrc=size=352x288:rate=24:duration=2",
            "-c:v", "mpeg4", p.to_str().unwrap(),
        ])
    })
}

/// 2 s of a 440 Hz tone as WAV (audio only).
pub fn tone_wav() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    once(&P, "tone.wav", |p| {
        ffmpeg(&["-f", "lavfi", "-i", "sine=duration=2", p.to_str().unwrap()])
    })
}

/// One still image of `size` written to `name` (the extension picks the format).
pub fn still(name: &str, size: &str, extra: &[&str]) -> PathBuf {
    let p = dir().join(name);
    let src = format!("testsrc=size={size}:rate=1:duration=1");
    let mut args = vec!["-f", "lavfi", "-i", src.as_str(), "-frames:v", "1"];
    args.extend_from_slice(extra);
    args.push(p.to_str().unwrap());
    ffmpeg(&args);
    p
}

/// A minimal little-endian EXIF block (APP1 payload) with Make, Model and DateTime.
pub fn exif_app1(make: &str, model: &str, datetime: &str) -> Vec<u8> {
    let strings: Vec<Vec<u8>> = [make, model, datetime]
        .iter()
        .map(|s| {
            let mut v = s.as_bytes().to_vec();
            v.push(0);
            v
        })
        .collect();
    let tags = [0x010Fu16, 0x0110, 0x0132];
    let n = tags.len();
    let ifd_size = 2 + n * 12 + 4;
    let mut data_off = 8 + ifd_size;
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&(n as u16).to_le_bytes());
    let mut blobs = Vec::new();
    for (tag, s) in tags.iter().zip(&strings) {
        tiff.extend_from_slice(&tag.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes()); // ASCII
        tiff.extend_from_slice(&(s.len() as u32).to_le_bytes());
        if s.len() <= 4 {
            let mut inline = s.clone();
            inline.resize(4, 0);
            tiff.extend_from_slice(&inline);
        } else {
            tiff.extend_from_slice(&(data_off as u32).to_le_bytes());
            data_off += s.len();
            blobs.extend_from_slice(s);
        }
    }
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(&blobs);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    app1
}

/// Insert an EXIF APP1 segment right after a JPEG's SOI marker.
pub fn add_exif(jpeg: &Path, out: &Path, app1: &[u8]) {
    let data = std::fs::read(jpeg).unwrap();
    assert_eq!(&data[..2], &[0xFF, 0xD8]);
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE1];
    v.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    v.extend_from_slice(app1);
    v.extend_from_slice(&data[2..]);
    std::fs::write(out, v).unwrap();
}

/// Write `len` pseudo-random bytes (deterministic).
pub fn garbage(name: &str, len: usize) -> PathBuf {
    let p = dir().join(name);
    let mut x = 0x2545F4914F6CDD1Du64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The first `fraction` of `src`'s bytes, written to `name`.
pub fn truncated(src: &Path, name: &str, fraction: f64) -> PathBuf {
    let data = std::fs::read(src).unwrap();
    let p = dir().join(name);
    std::fs::write(&p, &data[..(data.len() as f64 * fraction) as usize]).unwrap();
    p
}
