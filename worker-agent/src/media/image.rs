//! Image processing: MoRAG's image metadata plus a JPEG thumbnail.
//!
//! Decoding is FFmpeg's (PNG, JPEG, WebP, BMP, TIFF, GIF: the first frame); EXIF comes from
//! the `kamadak-exif` crate, which reads it from JPEG, TIFF, PNG (`eXIf`) and WebP. The
//! metadata has MoRAG's `ImageMetadata` fields: `{width, height, format, mode, file_size,
//! has_exif, exif_data, creation_time, camera_make, camera_model}`, with PIL's names for
//! `format` (`PNG`, `JPEG`, ...) and `mode` (`RGB`, `RGBA`, `L`, `P`, ...). Captioning and
//! OCR (MoRAG calls Gemini and Tesseract) are not done here: `caption` and `extracted_text`
//! are null.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::{codec, frame, media};
use serde::{Deserialize, Serialize};

use super::video::convert::Scalers;
use super::video::probe;
use super::{Artifact, Cancel, MediaKind, ProcessError, ProcessOutput, Progress, ProgressSink};
use crate::gpu::Engine;

/// Options of one image job.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Write a JPEG thumbnail.
    pub thumbnail: bool,
    /// The thumbnail fits in this box, keeping the aspect ratio (never enlarged).
    pub thumbnail_max: (u32, u32),
    /// JPEG quality, 1..=100 (MoRAG's `image_quality` default: 85).
    pub jpeg_quality: u8,
    /// Where conversion and resizing run.
    pub engine: Engine,
}

impl Default for ImageOptions {
    fn default() -> Self {
        Self {
            thumbnail: true,
            thumbnail_max: (320, 240),
            jpeg_quality: 85,
            engine: Engine::Cpu,
        }
    }
}

/// MoRAG's `ImageMetadata`, plus FFmpeg's pixel format name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMetadata {
    pub width: u32,
    pub height: u32,
    /// PIL's format name: `PNG`, `JPEG`, `WEBP`, `BMP`, `TIFF`, `GIF`.
    pub format: String,
    /// PIL's mode: `RGB`, `RGBA`, `L`, `LA`, `P`, `1`, `I;16`, or FFmpeg's name otherwise.
    pub mode: String,
    pub file_size: u64,
    pub has_exif: bool,
    /// EXIF tag name -> value as text.
    pub exif_data: BTreeMap<String, String>,
    pub creation_time: Option<String>,
    pub camera_make: Option<String>,
    pub camera_model: Option<String>,
    pub pixel_format: String,
}

/// PIL's format name for the codecs we accept; `None` for anything else.
fn pil_format(id: codec::Id) -> Option<&'static str> {
    Some(match id {
        codec::Id::PNG | codec::Id::APNG => "PNG",
        codec::Id::MJPEG | codec::Id::JPEGLS => "JPEG",
        codec::Id::WEBP => "WEBP",
        codec::Id::BMP => "BMP",
        codec::Id::TIFF => "TIFF",
        codec::Id::GIF => "GIF",
        _ => return None,
    })
}

/// PIL's mode for a decoded pixel format.
fn pil_mode(p: Pixel) -> String {
    match p {
        Pixel::GRAY8 | Pixel::GRAY10LE | Pixel::GRAY12LE => "L".into(),
        Pixel::GRAY16BE | Pixel::GRAY16LE => "I;16".into(),
        Pixel::YA8 => "LA".into(),
        Pixel::PAL8 => "P".into(),
        Pixel::MonoBlack | Pixel::MonoWhite => "1".into(),
        Pixel::RGBA | Pixel::BGRA | Pixel::ARGB | Pixel::ABGR | Pixel::YUVA420P => "RGBA".into(),
        Pixel::RGBA64BE | Pixel::RGBA64LE => "RGBA".into(),
        Pixel::RGB24
        | Pixel::BGR24
        | Pixel::RGB48BE
        | Pixel::RGB48LE
        | Pixel::BGRZ
        | Pixel::RGBZ
        | Pixel::YUVJ420P
        | Pixel::YUVJ422P
        | Pixel::YUVJ444P
        | Pixel::YUV420P
        | Pixel::YUV422P
        | Pixel::YUV444P
        | Pixel::GBRP => "RGB".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn ascii_or_display(f: &exif::Field) -> String {
    match &f.value {
        exif::Value::Ascii(parts) => parts
            .iter()
            .map(|p| {
                String::from_utf8_lossy(p)
                    .trim_end_matches('\0')
                    .trim()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => f.display_value().to_string(),
    }
}

/// TIFF tags that describe the pixel layout rather than the picture (a TIFF's IFD0 always
/// has them; they are not what MoRAG means by EXIF).
const STRUCTURE_TAGS: [u16; 27] = [
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320, 322,
    323, 324, 325, 338, 339, 513, 514, 530,
];

fn is_structure(f: &exif::Field) -> bool {
    f.tag.context() == exif::Context::Tiff && STRUCTURE_TAGS.contains(&f.tag.number())
}

/// EXIF fields of the primary image (IFD0 and its Exif/GPS sub-IFDs), by tag name, without
/// the TIFF pixel-layout tags.
fn read_exif(path: &Path) -> BTreeMap<String, String> {
    let Ok(file) = std::fs::File::open(path) else {
        return BTreeMap::new();
    };
    let mut reader = std::io::BufReader::new(file);
    match exif::Reader::new().read_from_container(&mut reader) {
        Ok(ex) => ex
            .fields()
            .filter(|f| f.ifd_num == exif::In::PRIMARY && !is_structure(f))
            .map(|f| (f.tag.to_string(), ascii_or_display(f)))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "no exif");
            BTreeMap::new()
        }
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> ProcessError {
    ProcessError::InvalidMedia {
        path: path.to_path_buf(),
        kind: MediaKind::Image,
        reason: reason.into(),
    }
}

/// Decode the first frame of the best video stream of an opened input.
fn first_frame(
    path: &Path,
    ictx: &mut ffmpeg::format::context::Input,
    index: usize,
    decoder: &mut codec::decoder::Video,
) -> Result<frame::Video, ProcessError> {
    let mut f = frame::Video::empty();
    let mut sent_eof = false;
    loop {
        if decoder.receive_frame(&mut f).is_ok() {
            return Ok(f);
        }
        if sent_eof {
            return Err(invalid(path, "no decodable image (truncated or corrupt)"));
        }
        match probe::read_packet(ictx) {
            Some(p) if p.stream() == index => {
                if let Err(e) = decoder.send_packet(&p) {
                    tracing::debug!(error = %e, "image packet rejected");
                }
            }
            Some(_) => {}
            None => {
                let _ = decoder.send_eof();
                sent_eof = true;
            }
        }
    }
}

/// Process an image: metadata (with EXIF) and a thumbnail, written into `out_dir`.
/// Runs synchronously: call it from `spawn_blocking`.
pub fn process_image(
    path: &Path,
    opts: &ImageOptions,
    progress: &dyn ProgressSink,
    cancel: &Cancel,
    out_dir: &Path,
) -> Result<ProcessOutput, ProcessError> {
    let started = Instant::now();
    let file_size = super::decode::start_job(path, cancel)?;
    progress.report(Progress {
        percent: 0.0,
        stage: "decode".into(),
        message: None,
    });
    let mut ictx = probe::open(path, MediaKind::Image)?;
    let stream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| invalid(path, "no image in it"))?;
    let index = stream.index();
    let id = stream.parameters().id();
    let Some(format) = pil_format(id) else {
        return Err(ProcessError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "{} is not an image format this agent processes (png, jpeg, webp, bmp, tiff, gif)",
                id.name()
            ),
        });
    };
    let mut decoder = codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| invalid(path, format!("cannot decode: {e}")))?;
    let frame = first_frame(path, &mut ictx, index, &mut decoder)?;
    if cancel.is_cancelled() {
        return Err(ProcessError::Cancelled);
    }
    let exif_data = read_exif(path);
    let get = |k: &str| exif_data.get(k).filter(|v| !v.is_empty()).cloned();
    let metadata = ImageMetadata {
        width: frame.width(),
        height: frame.height(),
        format: format.into(),
        mode: pil_mode(frame.format()),
        file_size,
        has_exif: !exif_data.is_empty(),
        creation_time: get("DateTime").or_else(|| get("DateTimeOriginal")),
        camera_make: get("Make"),
        camera_model: get("Model"),
        pixel_format: format!("{:?}", frame.format()).to_lowercase(),
        exif_data,
    };
    progress.report(Progress {
        percent: 50.0,
        stage: "thumbnail".into(),
        message: None,
    });

    let mut artifacts = Vec::new();
    let mut thumbnail_path = None;
    if opts.thumbnail {
        std::fs::create_dir_all(out_dir).map_err(|source| ProcessError::Output {
            path: out_dir.to_path_buf(),
            source,
        })?;
        let (mw, mh) = opts.thumbnail_max;
        let size = crate::frames::fit_within(frame.width(), frame.height(), mw.max(1), mh.max(1));
        let img = Scalers::default()
            .to_rgb(&opts.engine, &frame, Some(size))
            .map_err(|e| invalid(path, format!("cannot convert pixels: {e}")))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let out = out_dir.join(format!("{stem}_thumbnail.jpg"));
        crate::frames::encode_jpeg(&img, opts.jpeg_quality, &out).map_err(|e| {
            ProcessError::Output {
                path: out.clone(),
                source: std::io::Error::other(e),
            }
        })?;
        artifacts.push(Artifact::from_file(&out, "image/jpeg").map_err(|source| {
            ProcessError::Output {
                path: out.clone(),
                source,
            }
        })?);
        thumbnail_path = Some(out.display().to_string());
    }
    let result = serde_json::json!({
        "caption": null,
        "extracted_text": null,
        "metadata": metadata,
        "thumbnail_path": thumbnail_path,
        "processing_time": started.elapsed().as_secs_f64(),
        "confidence_scores": {},
        "success": true,
        "error_message": null,
    });
    progress.report(Progress {
        percent: 100.0,
        stage: "done".into(),
        message: None,
    });
    Ok(ProcessOutput {
        kind: MediaKind::Image,
        result,
        artifacts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_names() {
        assert_eq!(pil_format(codec::Id::MJPEG), Some("JPEG"));
        assert_eq!(pil_format(codec::Id::H264), None);
        assert_eq!(pil_mode(Pixel::RGBA), "RGBA");
        assert_eq!(pil_mode(Pixel::GRAY8), "L");
        assert_eq!(pil_mode(Pixel::PAL8), "P");
    }
}
