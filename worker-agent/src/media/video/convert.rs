//! From decoded FFmpeg frames to our frame types, through the selected [`Engine`].
//!
//! 4:2:0 frames (YUV420P, YUVJ420P, NV12) with positive strides go to the engine as they are
//! (conversion and resize on the GPU when there is one). Any other pixel format, or a frame
//! stored bottom-up (negative strides, as FFmpeg's BMP decoder produces), is first converted to
//! RGB24 or GRAY8 at its own size by swscale; the resize is always ours.

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::frame;
use ffmpeg_next::software::scaling;

use crate::frames::{
    self, ChromaLayout, ColorRange, FrameError, LumaImage, Plane, RgbImage, YuvFrame,
};
use crate::gpu::Engine;

/// Why a decoded frame could not be converted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// Our frame operation refused the frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// swscale cannot convert this pixel format.
    #[error("cannot convert pixel format {format:?}: {source}")]
    Scale {
        format: Pixel,
        source: ffmpeg::Error,
    },
}

/// Whether every plane of `f` is stored top-down (FFmpeg allows negative line sizes).
fn strides_positive(f: &frame::Video) -> bool {
    // SAFETY: `as_ptr` points at the frame's live AVFrame; only `linesize` is read.
    let linesize = unsafe { (*f.as_ptr()).linesize };
    linesize.iter().all(|&l| l >= 0)
}

/// The frame as a 4:2:0 view, when our own conversion handles its format.
fn yuv_view(f: &frame::Video) -> Option<YuvFrame<'_>> {
    if !strides_positive(f) || f.width() == 0 || f.height() == 0 {
        return None;
    }
    let (layout, full) = match f.format() {
        Pixel::YUV420P => (ChromaLayout::Planar, false),
        Pixel::YUVJ420P => (ChromaLayout::Planar, true),
        Pixel::NV12 => (ChromaLayout::Interleaved, false),
        _ => return None,
    };
    let range = if full || f.color_range() == ffmpeg::color::Range::JPEG {
        ColorRange::Full
    } else {
        ColorRange::Limited
    };
    let plane = |i: usize| Plane {
        data: f.data(i),
        stride: f.stride(i),
    };
    let u = plane(1);
    let v = if layout == ChromaLayout::Planar {
        plane(2)
    } else {
        Plane {
            data: &[],
            stride: 0,
        }
    };
    Some(YuvFrame {
        width: f.width(),
        height: f.height(),
        y: plane(0),
        u,
        v,
        layout,
        range,
    })
}

/// A swscale context reused while the input keeps its format and size.
#[derive(Default)]
pub struct Scalers {
    ctx: Option<(scaling::Context, (Pixel, u32, u32, Pixel))>,
}

impl std::fmt::Debug for Scalers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scalers").finish_non_exhaustive()
    }
}

impl Scalers {
    /// Convert `f` to `dst` format at its own size.
    fn convert(&mut self, f: &frame::Video, dst: Pixel) -> Result<frame::Video, ConvertError> {
        let key = (f.format(), f.width(), f.height(), dst);
        if self.ctx.as_ref().map(|(_, k)| *k) != Some(key) {
            let ctx = scaling::Context::get(
                f.format(),
                f.width(),
                f.height(),
                dst,
                f.width(),
                f.height(),
                scaling::Flags::POINT,
            )
            .map_err(|source| ConvertError::Scale {
                format: f.format(),
                source,
            })?;
            self.ctx = Some((ctx, key));
        }
        let mut out = frame::Video::empty();
        if let Some((ctx, _)) = self.ctx.as_mut() {
            ctx.run(f, &mut out).map_err(|source| ConvertError::Scale {
                format: f.format(),
                source,
            })?;
        }
        Ok(out)
    }

    /// The frame as RGB24, resized to `size` when given.
    pub fn to_rgb(
        &mut self,
        engine: &Engine,
        f: &frame::Video,
        size: Option<(u32, u32)>,
    ) -> Result<RgbImage, ConvertError> {
        if let Some(view) = yuv_view(f) {
            return Ok(match size {
                Some((w, h)) => engine.yuv420_to_rgb_resized(&view, w, h)?,
                None => engine.yuv420_to_rgb(&view)?,
            });
        }
        let rgb = self.convert(f, Pixel::RGB24)?;
        let img = frames::rgb_from_plane(
            rgb.width(),
            rgb.height(),
            Plane {
                data: rgb.data(0),
                stride: rgb.stride(0),
            },
        )?;
        Ok(match size {
            Some((w, h)) => engine.resize_rgb(&img, w, h)?,
            None => img,
        })
    }

    /// The frame's luma shrunk to `w` x `h` by area averaging (the Y plane itself for YUV
    /// frames, read in place).
    pub fn to_luma(
        &mut self,
        engine: &Engine,
        f: &frame::Video,
        (w, h): (u32, u32),
    ) -> Result<LumaImage, ConvertError> {
        if let Some(view) = yuv_view(f) {
            return Ok(engine.luma_area(view.y, view.width, view.height, w, h)?);
        }
        let grey = self.convert(f, Pixel::GRAY8)?;
        let plane = Plane {
            data: grey.data(0),
            stride: grey.stride(0),
        };
        Ok(engine.luma_area(plane, grey.width(), grey.height(), w, h)?)
    }
}
