//! Input statistics of a decoded image, for input-shift tests and near-duplicate detection.
//!
//! Pure. Definitions (each is checked against a plain numpy implementation in
//! `training/tests/test_image_stats.py` on the committed fixture `tests/data/image_stats.json`):
//!
//! - The image is first box-downscaled (area filter) so that its longer side is at most
//!   [`STATS_MAX_SIDE`] pixels; this bounds the cost per request and makes the statistics
//!   independent of the camera's resolution (a downscaled RGB image is rounded back to 8 bits).
//!   Gray is ITU-R 601 luma (as Pillow's `convert("L")`).
//! - `brightness`: mean gray / 255, in 0..1.
//! - `contrast`: RMS contrast, the population standard deviation of gray / 255.
//! - `sharpness`: variance of the 4-neighbour Laplacian of gray (0..255 scale) over interior
//!   pixels (0 when the image is under 3×3).
//! - `saturation`: mean HSV saturation (max − min) / max of the RGB pixels (0 where max is 0).
//! - `dhash`: gray box-resized to 9×8 and rounded to integers; bit = right pixel brighter than
//!   its left neighbour,
//!   row-major, the first comparison in the most significant bit.

use image::DynamicImage;

use crate::preprocess::{Color, Layout, Preprocess, Resize, luma_601, to_tensor};

/// Statistics are computed on the image box-downscaled to at most this many pixels a side.
pub const STATS_MAX_SIDE: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputStats {
    pub width: u32,
    pub height: u32,
    pub brightness: f32,
    pub contrast: f32,
    pub sharpness: f32,
    pub saturation: f32,
}

/// Gray and saturation planes of the (bounded) image, as f64.
fn planes(image: &DynamicImage) -> (usize, usize, Vec<f64>, Vec<f64>) {
    let (w, h) = (image.width(), image.height());
    let longest = w.max(h).max(1);
    let (tw, th) = if longest > STATS_MAX_SIDE {
        let scale = f64::from(STATS_MAX_SIDE) / f64::from(longest);
        (
            ((f64::from(w) * scale).round() as u32).max(1),
            ((f64::from(h) * scale).round() as u32).max(1),
        )
    } else {
        (w, h)
    };
    // Resize the RGB planes with the area filter (unscaled 0..255), then derive gray/saturation.
    let spec = Preprocess {
        width: tw,
        height: th,
        color: Color::Rgb,
        layout: Layout::Nchw,
        resize: Resize::Area,
        scale: 1.0,
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
    };
    let n = (tw * th) as usize;
    let rgb: Vec<f32> = if (tw, th) == (w, h) {
        // No resize: read exact 8-bit values.
        let buf = image.to_rgb8();
        let mut planar = vec![0f32; 3 * n];
        for (i, p) in buf.pixels().enumerate() {
            for c in 0..3 {
                planar[c * n + i] = f32::from(p[c]);
            }
        }
        planar
    } else {
        let mut planar = vec![0f32; 3 * n];
        to_tensor(image, &spec, &mut planar);
        planar
    };
    let mut gray = Vec::with_capacity(n);
    let mut sat = Vec::with_capacity(n);
    let is_gray_source = matches!(
        image,
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_)
    );
    for i in 0..n {
        let (r, g, b) = (rgb[i], rgb[n + i], rgb[2 * n + i]);
        let y = if is_gray_source {
            f64::from(r)
        } else {
            let q = |v: f32| v.round().clamp(0.0, 255.0) as u8;
            f64::from(luma_601(q(r), q(g), q(b)))
        };
        gray.push(y);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        sat.push(if max > 0.0 {
            f64::from((max - min) / max)
        } else {
            0.0
        });
    }
    (tw as usize, th as usize, gray, sat)
}

/// The statistics of one decoded image (width and height are the decoded, full size).
pub fn input_stats(image: &DynamicImage) -> InputStats {
    let (w, h, gray, sat) = planes(image);
    let n = gray.len() as f64;
    let mean = gray.iter().sum::<f64>() / n;
    let var = gray.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
    let saturation = sat.iter().sum::<f64>() / n;
    let sharpness = if w >= 3 && h >= 3 {
        let mut lap = Vec::with_capacity((w - 2) * (h - 2));
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let c = gray[y * w + x];
                let v = gray[(y - 1) * w + x]
                    + gray[(y + 1) * w + x]
                    + gray[y * w + x - 1]
                    + gray[y * w + x + 1]
                    - 4.0 * c;
                lap.push(v);
            }
        }
        let m = lap.iter().sum::<f64>() / lap.len() as f64;
        lap.iter().map(|v| (v - m).powi(2)).sum::<f64>() / lap.len() as f64
    } else {
        0.0
    };
    InputStats {
        width: image.width(),
        height: image.height(),
        brightness: (mean / 255.0) as f32,
        contrast: (var.sqrt() / 255.0) as f32,
        sharpness: sharpness as f32,
        saturation: saturation as f32,
    }
}

/// 64-bit difference hash (see the module docs for the exact definition).
pub fn dhash(image: &DynamicImage) -> u64 {
    let spec = Preprocess {
        width: 9,
        height: 8,
        color: Color::Grayscale,
        layout: Layout::Nchw,
        resize: Resize::Area,
        scale: 1.0,
        mean: vec![0.0],
        std: vec![1.0],
    };
    let mut small = [0f32; 72];
    to_tensor(image, &spec, &mut small);
    let mut hash = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            hash <<= 1;
            // Compared as 8-bit values, so that float noise in the filter flips no bit.
            if small[y * 9 + x + 1].round() > small[y * 9 + x].round() {
                hash |= 1;
            }
        }
    }
    hash
}

/// Number of differing bits between two hashes.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    #[test]
    fn flat_gray_image() {
        let img = DynamicImage::ImageLuma8(GrayImage::from_pixel(10, 6, Luma([51])));
        let s = input_stats(&img);
        assert_eq!((s.width, s.height), (10, 6));
        assert!((s.brightness - 0.2).abs() < 1e-6);
        assert_eq!(s.contrast, 0.0);
        assert_eq!(s.sharpness, 0.0);
        assert_eq!(s.saturation, 0.0);
        assert_eq!(dhash(&img), 0);
    }

    #[test]
    fn saturation_and_contrast_follow_their_definitions() {
        // Half pure red (saturation 1, gray 76), half black (saturation 0, gray 0).
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(4, 2, |x, _| {
            if x < 2 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 0])
            }
        }));
        let s = input_stats(&img);
        assert!((s.saturation - 0.5).abs() < 1e-6);
        let gray_red = f64::from(luma_601(255, 0, 0));
        assert!((f64::from(s.brightness) - gray_red / 2.0 / 255.0).abs() < 1e-6);
        assert!((f64::from(s.contrast) - gray_red / 2.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn sharpness_of_a_single_dot() {
        // One bright pixel in the middle of 3x3: one interior Laplacian value, variance 0.
        let mut g = GrayImage::new(3, 3);
        g.put_pixel(1, 1, Luma([100]));
        assert_eq!(input_stats(&DynamicImage::ImageLuma8(g)).sharpness, 0.0);
        // 4x3 with the dot at (1,1): interior values -400 and 100 → variance 62500.
        let mut g = GrayImage::new(4, 3);
        g.put_pixel(1, 1, Luma([100]));
        assert_eq!(input_stats(&DynamicImage::ImageLuma8(g)).sharpness, 62500.0);
    }

    #[test]
    fn dhash_bits_and_distance() {
        // Brightness rising left to right: every comparison is "right brighter" → all ones.
        let ramp =
            DynamicImage::ImageLuma8(GrayImage::from_fn(90, 80, |x, _| Luma([(x * 2) as u8])));
        assert_eq!(dhash(&ramp), u64::MAX);
        let falling = DynamicImage::ImageLuma8(GrayImage::from_fn(90, 80, |x, _| {
            Luma([(200 - x * 2) as u8])
        }));
        assert_eq!(dhash(&falling), 0);
        assert_eq!(hamming(dhash(&ramp), dhash(&falling)), 64);
    }

    #[test]
    fn large_images_are_bounded() {
        let big = DynamicImage::ImageLuma8(GrayImage::from_fn(1000, 500, |x, y| {
            Luma([((x + y) % 256) as u8])
        }));
        let s = input_stats(&big);
        assert_eq!((s.width, s.height), (1000, 500));
        assert!(s.brightness > 0.0 && s.brightness < 1.0);
    }
}
