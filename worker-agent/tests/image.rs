//! Image processing against real images made with the ffmpeg CLI.

mod video_common;

use std::path::Path;

use morag_agent::media::image::{process_image, ImageOptions};
use morag_agent::media::{Cancel, NoProgress, ProcessError, ProcessOutput};
use video_common as media;

fn run(path: &Path) -> Result<ProcessOutput, ProcessError> {
    let out = tempfile::tempdir().unwrap();
    let r = process_image(
        path,
        &ImageOptions::default(),
        &NoProgress,
        &Cancel::new(),
        out.path(),
    );
    // Check the thumbnail while the folder exists.
    if let Ok(o) = &r {
        let thumb = o.result["thumbnail_path"].as_str().unwrap();
        let t = process_image(
            Path::new(thumb),
            &ImageOptions {
                thumbnail: false,
                ..ImageOptions::default()
            },
            &NoProgress,
            &Cancel::new(),
            out.path(),
        )
        .unwrap();
        let (w, h) = (
            t.result["metadata"]["width"].as_u64().unwrap(),
            t.result["metadata"]["height"].as_u64().unwrap(),
        );
        assert!(w <= 320 && h <= 240, "thumbnail {w}x{h}");
        let m = &o.result["metadata"];
        let (sw, sh) = (m["width"].as_f64().unwrap(), m["height"].as_f64().unwrap());
        // Aspect ratio kept within a pixel's rounding.
        assert!(
            (w as f64 / h as f64 - sw / sh).abs() < 0.02 * sw / sh,
            "{w}x{h} from {sw}x{sh}"
        );
        assert_eq!(o.artifacts.len(), 1);
        assert_eq!(o.artifacts[0].media_type, "image/jpeg");
    }
    r
}

fn meta(p: &Path) -> serde_json::Value {
    run(p).unwrap().result["metadata"].clone()
}

#[test]
fn formats_and_modes_match_pil_names() {
    let cases: [(&str, &[&str], &str, &str); 6] = [
        ("a.png", &["-pix_fmt", "rgb24"], "PNG", "RGB"),
        ("b.png", &["-pix_fmt", "rgba"], "PNG", "RGBA"),
        ("c.jpg", &["-q:v", "3"], "JPEG", "RGB"),
        ("d.webp", &[], "WEBP", "RGB"),
        ("e.bmp", &[], "BMP", "RGB"),
        ("f.tiff", &[], "TIFF", "RGB"),
    ];
    for (name, extra, format, mode) in cases {
        let p = media::still(name, "400x300", extra);
        let m = meta(&p);
        assert_eq!(m["format"], format, "{name}: {m}");
        assert_eq!(m["mode"], mode, "{name}: {m}");
        assert_eq!(
            (m["width"].as_u64(), m["height"].as_u64()),
            (Some(400), Some(300)),
            "{name}"
        );
        assert_eq!(
            m["file_size"].as_u64(),
            Some(std::fs::metadata(&p).unwrap().len())
        );
        if format == "TIFF" {
            // A TIFF's IFD0 is EXIF-shaped: layout tags are left out, descriptive ones kept.
            assert!(m["exif_data"].get("ImageWidth").is_none(), "{m}");
            assert!(m["exif_data"].get("BitsPerSample").is_none(), "{m}");
        } else {
            assert_eq!(m["has_exif"], false, "{name}");
        }
    }
}

#[test]
fn gif_and_grey_and_odd_sizes() {
    let gif = media::still("g.gif", "123x45", &[]);
    let m = meta(&gif);
    assert_eq!(m["format"], "GIF");
    assert_eq!(
        (m["width"].as_u64(), m["height"].as_u64()),
        (Some(123), Some(45))
    );

    let grey = media::still("grey.png", "1000x200", &["-pix_fmt", "gray"]);
    let m = meta(&grey);
    assert_eq!(m["mode"], "L");

    let tiny = media::still("tiny.png", "1x1", &[]);
    assert_eq!(meta(&tiny)["width"], 1);
}

#[test]
fn jpeg_exif_is_read() {
    let plain = media::still("plain.jpg", "640x480", &[]);
    let with = media::dir().join("exif.jpg");
    let app1 = media::exif_app1("Canon", "EOS 5D Mark IV", "2023:04:05 06:07:08");
    media::add_exif(&plain, &with, &app1);
    let m = meta(&with);
    assert_eq!(m["has_exif"], true, "{m}");
    assert_eq!(m["camera_make"], "Canon");
    assert_eq!(m["camera_model"], "EOS 5D Mark IV");
    assert_eq!(m["creation_time"], "2023:04:05 06:07:08");
    assert_eq!(m["exif_data"]["Make"], "Canon");
    assert_eq!(m["format"], "JPEG");
    assert_eq!(meta(&plain)["has_exif"], false);
}

#[test]
#[rustfmt::skip]
fn thumbnail_colours_survive_the_pipeline() {
    // A solid colour PNG: the JPEG thumbnail decodes back to about the same colour.
    let p = media::dir().join("solid.png");
    media::ffmpeg(&[
        "-f", "lavfi", "-i", "color=c=0x3080C0:size=200x100:duration=1",
        "-frames:v", "1", p.to_str().unwrap(),
    ]);
    let out = tempfile::tempdir().unwrap();
    let r = process_image(&p, &ImageOptions::default(), &NoProgress, &Cancel::new(), out.path()).unwrap();
    let thumb = r.result["thumbnail_path"].as_str().unwrap();
    let raw = out.path().join("back.rgb");
    media::ffmpeg(&["-i", thumb, "-f", "rawvideo", "-pix_fmt", "rgb24", raw.to_str().unwrap()]);
    let px = std::fs::read(raw).unwrap();
    let centre = &px[(50 * 200 + 100) * 3..][..3];
    for (got, want) in centre.iter().zip([0x30u8, 0x80, 0xC0]) {
        assert!(got.abs_diff(want) <= 6, "{centre:?}");
    }
}

#[test]
fn bad_images_give_clear_errors() {
    let missing = media::dir().join("missing.png");
    assert!(matches!(run(&missing), Err(ProcessError::Input { .. })));

    let empty = media::dir().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(run(&empty), Err(ProcessError::Empty(_))));

    let text = media::dir().join("readme.png");
    std::fs::write(&text, "hello, not an image").unwrap();
    let e = run(&text).unwrap_err();
    assert!(matches!(e, ProcessError::InvalidMedia { .. }), "{e}");

    let noise = media::garbage("noise.jpg", 10_000);
    let e = run(&noise).unwrap_err();
    assert!(matches!(e, ProcessError::InvalidMedia { .. }), "{e}");

    // A PNG cut after its header: FFmpeg recognises it but cannot decode it.
    let png = media::still("whole.png", "300x200", &[]);
    let cut = media::truncated(&png, "cut.png", 0.05);
    let e = run(&cut).unwrap_err();
    assert!(matches!(e, ProcessError::InvalidMedia { .. }), "{e}");

    // A video is not an image this processor takes.
    let e = run(&media::silent_video()).unwrap_err();
    assert!(matches!(e, ProcessError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("mpeg4"), "{e}");
}
