//! JPEG output of RGB frames.

use std::path::Path;

use super::{FrameError, RgbImage};

/// Encode an RGB image as a baseline JPEG file with the IJG quality scale (1..=100).
///
/// Uses the pure-Rust `jpeg-encoder` crate with 4:2:0 chroma subsampling, as libjpeg and PIL
/// do by default.
pub fn encode_jpeg(img: &RgbImage, quality: u8, path: &Path) -> Result<(), FrameError> {
    let (w, h) = (
        u16::try_from(img.width).map_err(|_| FrameError::Dimensions {
            width: img.width,
            height: img.height,
            reason: "wider than JPEG allows",
        })?,
        u16::try_from(img.height).map_err(|_| FrameError::Dimensions {
            width: img.width,
            height: img.height,
            reason: "taller than JPEG allows",
        })?,
    );
    let mut encoder = jpeg_encoder::Encoder::new_file(path, quality.clamp(1, 100))
        .map_err(|e| FrameError::Jpeg(e.to_string()))?;
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    encoder
        .encode(&img.data, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| FrameError::Jpeg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_round_trip_writes_a_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jpg");
        let img = RgbImage {
            width: 33,
            height: 17,
            data: vec![200; 33 * 17 * 3],
        };
        encode_jpeg(&img, 85, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
        assert_eq!(&bytes[bytes.len() - 2..], &[0xFF, 0xD9]);
    }
}
