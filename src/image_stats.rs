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
//!   row-major, the first comparison in the most significant bit. Like the statistics, it is
//!   taken from the downscaled copy when the image is larger than [`STATS_MAX_SIDE`].
//! - `descriptor` ([`Descriptor`], for out-of-distribution search, whatever the model): gray
//!   area-resized to [`DESCRIPTOR_SIDE`]×[`DESCRIPTOR_SIDE`] (not rounded), divided by 255, its
//!   mean subtracted, then divided by its Euclidean norm (by [`DESCRIPTOR_MIN_NORM`] when the
//!   norm is smaller: a flat image is all zeros). Row-major. Brightness and contrast changes leave
//!   it as it is (the input-shift tests watch those); what it keeps is the image's layout. Taken
//!   from the downscaled copy, like the dHash.

use std::borrow::Cow;

use image::{DynamicImage, GrayImage};

use crate::preprocess::{Color, Layout, Preprocess, Resize, luma_601, resize_to_bytes, to_tensor};

/// Statistics are computed on the image box-downscaled to at most this many pixels a side.
pub const STATS_MAX_SIDE: u32 = 256;

/// The descriptor is a gray thumbnail this many pixels a side.
pub const DESCRIPTOR_SIDE: usize = 8;

/// Values in a [`Descriptor`].
pub const DESCRIPTOR_LEN: usize = DESCRIPTOR_SIDE * DESCRIPTOR_SIDE;

/// The smallest norm a descriptor is divided by (see the module docs).
pub const DESCRIPTOR_MIN_NORM: f64 = 1e-3;

/// A small, model-independent description of an image's layout: the normalized gray thumbnail
/// defined in the module docs.
pub type Descriptor = [f32; DESCRIPTOR_LEN];

/// What the log, the monitor and the out-of-distribution score keep of a decoded image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Description {
    pub stats: InputStats,
    pub dhash: u64,
    pub descriptor: Descriptor,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputStats {
    pub width: u32,
    pub height: u32,
    pub brightness: f32,
    pub contrast: f32,
    pub sharpness: f32,
    pub saturation: f32,
}

impl InputStats {
    /// The values in the order of the monitor's input features: brightness, contrast,
    /// sharpness, saturation, width, height.
    pub fn values(&self) -> [f32; 6] {
        [
            self.brightness,
            self.contrast,
            self.sharpness,
            self.saturation,
            self.width as f32,
            self.height as f32,
        ]
    }
}

/// The image itself when its longer side is at most [`STATS_MAX_SIDE`], else its area-downscaled
/// copy rounded back to 8 bits (gray stays gray: one channel, one pass over the pixels).
fn bounded(image: &DynamicImage) -> Cow<'_, DynamicImage> {
    let (w, h) = (image.width(), image.height());
    let longest = w.max(h).max(1);
    if longest <= STATS_MAX_SIDE {
        return Cow::Borrowed(image);
    }
    let scale = f64::from(STATS_MAX_SIDE) / f64::from(longest);
    let tw = ((f64::from(w) * scale).round() as u32).max(1);
    let th = ((f64::from(h) * scale).round() as u32).max(1);
    let gray = matches!(
        image,
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_)
    );
    let color = if gray { Color::Grayscale } else { Color::Rgb };
    let bytes = resize_to_bytes(image, tw, th, color, Resize::Area);
    Cow::Owned(if gray {
        DynamicImage::ImageLuma8(image::GrayImage::from_raw(tw, th, bytes).expect("sized above"))
    } else {
        DynamicImage::ImageRgb8(image::RgbImage::from_raw(tw, th, bytes).expect("sized above"))
    })
}

/// A bounded image's gray plane (601 luma of RGB; gray as it is) and the sum of its pixels'
/// saturation, in one pass over the pixels.
fn gray_and_saturation(image: &DynamicImage) -> (Cow<'_, GrayImage>, f64) {
    let converted;
    let rgb = match image {
        DynamicImage::ImageLuma8(gray) => return (Cow::Borrowed(gray), 0.0),
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => {
            converted = other.to_rgb8();
            &converted
        }
    };
    let mut gray = Vec::with_capacity((rgb.width() * rgb.height()) as usize);
    let mut saturation = 0f64;
    for p in rgb.as_raw().chunks_exact(3) {
        let (r, g, b) = (p[0], p[1], p[2]);
        gray.push(luma_601(r, g, b));
        let (max, min) = (r.max(g).max(b), r.min(g).min(b));
        if max > 0 {
            saturation += f64::from(max - min) / f64::from(max);
        }
    }
    let gray = GrayImage::from_raw(rgb.width(), rgb.height(), gray).expect("one value a pixel");
    (Cow::Owned(gray), saturation)
}

/// The statistics, the dHash and the descriptor of one decoded image, from one downscaled copy
/// when it is large, and from one gray plane of it (the dHash and the descriptor read the same
/// 601 luma values they would compute from RGB).
pub fn describe(image: &DynamicImage) -> Description {
    let small = bounded(image);
    let (gray, saturation) = gray_and_saturation(&small);
    let stats = stats_of_gray(&gray, saturation, image.width(), image.height());
    let gray: Cow<'_, DynamicImage> = match gray {
        Cow::Borrowed(_) => Cow::Borrowed(&*small),
        Cow::Owned(g) => Cow::Owned(DynamicImage::ImageLuma8(g)),
    };
    Description {
        stats,
        dhash: dhash_of_bounded(&gray),
        descriptor: descriptor_of_bounded(&gray),
    }
}

/// The descriptor of one decoded image (see the module docs for the exact definition).
pub fn descriptor(image: &DynamicImage) -> Descriptor {
    descriptor_of_bounded(&bounded(image))
}

fn descriptor_of_bounded(image: &DynamicImage) -> Descriptor {
    let spec = Preprocess {
        width: DESCRIPTOR_SIDE as u32,
        height: DESCRIPTOR_SIDE as u32,
        color: Color::Grayscale,
        layout: Layout::Nchw,
        resize: Resize::Area,
        scale: 1.0 / 255.0,
        mean: vec![0.0],
        std: vec![1.0],
    };
    let mut small = [0f32; DESCRIPTOR_LEN];
    to_tensor(image, &spec, &mut small);
    let mean = small.iter().map(|&v| f64::from(v)).sum::<f64>() / DESCRIPTOR_LEN as f64;
    let norm = small
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(DESCRIPTOR_MIN_NORM);
    small.map(|v| ((f64::from(v) - mean) / norm) as f32)
}

/// The statistics of one decoded image (width and height are the decoded, full size).
pub fn input_stats(image: &DynamicImage) -> InputStats {
    let small = bounded(image);
    let (gray, saturation) = gray_and_saturation(&small);
    stats_of_gray(&gray, saturation, image.width(), image.height())
}

/// The statistics from a bounded image's gray plane and saturation sum. Every sum but the
/// saturation's is of integers (gray values, squares, Laplacians), kept exactly in integers.
fn stats_of_gray(gray: &GrayImage, saturation: f64, width: u32, height: u32) -> InputStats {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    let gray = gray.as_raw();
    let n = gray.len() as f64;
    // Sums of a row fit 32 bits (a row is at most STATS_MAX_SIDE pixels: 256 · 255² < 2³²),
    // which the compiler vectorizes; the rows' sums are added in 64 bits. Exact either way.
    assert!(w <= STATS_MAX_SIDE as usize, "a bounded plane");
    let (mut sum, mut sum_sq) = (0u64, 0u64);
    for row in gray.chunks(w.max(1)) {
        let (s, s2) = row.iter().fold((0u32, 0u32), |(s, s2), &g| {
            let g = u32::from(g);
            (s + g, s2 + g * g)
        });
        sum += u64::from(s);
        sum_sq += u64::from(s2);
    }
    let mean = sum as f64 / n;
    let var = (sum_sq as f64 / n - mean * mean).max(0.0);
    let sharpness = if w >= 3 && h >= 3 {
        let (mut s, mut s2) = (0i64, 0i64);
        for y in 1..h - 1 {
            let (up, row, down) = (
                &gray[(y - 1) * w..y * w],
                &gray[y * w..(y + 1) * w],
                &gray[(y + 1) * w..(y + 2) * w],
            );
            // |v| ≤ 4 · 255, so a row's v² sum is under 256 · 1020² < 2³¹.
            let (rs, rs2) = (1..w - 1).fold((0i32, 0i32), |(rs, rs2), x| {
                let v = i32::from(up[x])
                    + i32::from(down[x])
                    + i32::from(row[x - 1])
                    + i32::from(row[x + 1])
                    - 4 * i32::from(row[x]);
                (rs + v, rs2 + v * v)
            });
            s += i64::from(rs);
            s2 += i64::from(rs2);
        }
        let m = ((w - 2) * (h - 2)) as f64;
        let (s, s2) = (s as f64, s2 as f64);
        (s2 / m - (s / m) * (s / m)).max(0.0)
    } else {
        0.0
    };
    InputStats {
        width,
        height,
        brightness: (mean / 255.0) as f32,
        contrast: (var.sqrt() / 255.0) as f32,
        sharpness: sharpness as f32,
        saturation: (saturation / n) as f32,
    }
}

/// 64-bit difference hash (see the module docs for the exact definition).
pub fn dhash(image: &DynamicImage) -> u64 {
    dhash_of_bounded(&bounded(image))
}

fn dhash_of_bounded(image: &DynamicImage) -> u64 {
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

    /// Every statistic agrees with the plain numpy definitions of
    /// `training/make_stats_fixture.py` (1e-6 relative; dHash exactly).
    #[test]
    fn statistics_match_the_numpy_fixture() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixture: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join("tests/data/image_stats.json")).unwrap(),
        )
        .unwrap();
        let images = fixture["images"].as_array().unwrap();
        assert!(images.len() >= 7);
        let close = |got: f32, want: f64, what: &str, file: &str| {
            let got = f64::from(got);
            let tol = 1e-6 * want.abs().max(1e-3);
            assert!((got - want).abs() <= tol, "{file} {what}: {got} vs {want}");
        };
        for entry in images {
            let file = entry["file"].as_str().unwrap();
            let img = image::open(root.join(file)).unwrap();
            let s = input_stats(&img);
            assert_eq!(u64::from(s.width), entry["width"].as_u64().unwrap());
            assert_eq!(u64::from(s.height), entry["height"].as_u64().unwrap());
            close(
                s.brightness,
                entry["brightness"].as_f64().unwrap(),
                "brightness",
                file,
            );
            close(
                s.contrast,
                entry["contrast"].as_f64().unwrap(),
                "contrast",
                file,
            );
            close(
                s.sharpness,
                entry["sharpness"].as_f64().unwrap(),
                "sharpness",
                file,
            );
            close(
                s.saturation,
                entry["saturation"].as_f64().unwrap(),
                "saturation",
                file,
            );
            let want: u64 = entry["dhash"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                dhash(&img),
                want,
                "{file} dhash: {:064b} vs {want:064b}",
                dhash(&img)
            );
        }
    }

    /// The descriptor agrees with the numpy and Pillow definition of
    /// `tests/data/make_descriptor_fixture.py` (1e-5 per value), including an image over
    /// [`STATS_MAX_SIDE`], a flat one and bundled digits, out-of-distribution and photo images.
    #[test]
    fn descriptor_matches_the_numpy_fixture() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixture: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join("tests/data/descriptor_fixture.json")).unwrap(),
        )
        .unwrap();
        let images = fixture["images"].as_array().unwrap();
        assert!(images.len() >= 9);
        for entry in images {
            let file = entry["file"].as_str().unwrap();
            let img = image::open(root.join(file)).unwrap();
            let got = descriptor(&img);
            assert_eq!(got, describe(&img).descriptor, "{file}");
            let want = entry["descriptor"].as_array().unwrap();
            assert_eq!(want.len(), DESCRIPTOR_LEN, "{file}");
            // Over STATS_MAX_SIDE, the bounded copy's 8-bit rounding (an f32 filter here, f64
            // in numpy) may settle a tie the other way on a few of its pixels.
            let tolerance = if img.width().max(img.height()) > STATS_MAX_SIDE {
                1e-4
            } else {
                1e-5
            };
            let worst = got
                .iter()
                .zip(want)
                .map(|(g, w)| (f64::from(*g) - w.as_f64().unwrap()).abs())
                .fold(0.0, f64::max);
            println!("{file}: largest difference {worst:.1e}");
            assert!(worst <= tolerance, "{file}: {got:?} vs {want:?}");
            // Unit norm, or all zeros for a flat image.
            let norm = got
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-5 || norm == 0.0,
                "{file}: norm {norm}"
            );
        }
        // Brightness and contrast leave it as it is.
        let ramp = |gain: u32, offset: u32| {
            DynamicImage::ImageLuma8(GrayImage::from_fn(32, 32, |x, y| {
                Luma([(offset + gain * ((x + 2 * y) % 40)) as u8])
            }))
        };
        let (a, b) = (descriptor(&ramp(2, 10)), descriptor(&ramp(5, 40)));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
    }

    /// What the descriptor adds to the request path: `cargo test --release --lib
    /// descriptor_cost -- --nocapture` (the fastest of 30 rounds; 2 in a debug build).
    #[test]
    fn descriptor_cost_is_printed() {
        let rounds = if cfg!(debug_assertions) { 2 } else { 30 };
        for side in [32u32, 256] {
            let img = DynamicImage::ImageLuma8(GrayImage::from_fn(side, side, |x, y| {
                Luma([((x * 7 + y * 3) % 256) as u8])
            }));
            let per = (0..rounds)
                .map(|_| {
                    let started = std::time::Instant::now();
                    for _ in 0..100 {
                        std::hint::black_box(descriptor(std::hint::black_box(&img)));
                    }
                    started.elapsed().as_nanos() as f64 / 100.0
                })
                .fold(f64::INFINITY, f64::min);
            println!("descriptor of a {side}x{side} gray image: {per:.0} ns");
        }
    }

    /// What a photo costs on the request path beside its decode: the tensor of a 224×224 RGB
    /// model and the description (statistics, dHash, descriptor), for a 320×240 and a
    /// 1920×1080 RGB image. `cargo test --release --lib photo_preprocess_cost -- --nocapture`
    /// (the fastest of 20 rounds; 2 in a debug build).
    #[test]
    fn photo_preprocess_cost_is_printed() {
        for (w, h) in [(320, 240), (1920, 1080)] {
            photo_preprocess_cost(w, h);
        }
    }

    fn photo_preprocess_cost(w: u32, h: u32) {
        let rounds = if cfg!(debug_assertions) { 2 } else { 20 };
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 7 + y) as u8, (x ^ y) as u8, (x * y) as u8])
        }));
        let spec = Preprocess {
            width: 224,
            height: 224,
            color: Color::Rgb,
            layout: Layout::Nchw,
            resize: Resize::Area,
            scale: 1.0 / 255.0,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        };
        let mut tensor = vec![0f32; spec.tensor_len()];
        let fastest = |f: &mut dyn FnMut()| {
            (0..rounds)
                .map(|_| {
                    let started = std::time::Instant::now();
                    for _ in 0..10 {
                        f();
                    }
                    started.elapsed().as_nanos() as f64 / 10e3
                })
                .fold(f64::INFINITY, f64::min)
        };
        let tensor_us =
            fastest(&mut || to_tensor(std::hint::black_box(&image), &spec, &mut tensor));
        let describe_us = fastest(&mut || {
            std::hint::black_box(describe(std::hint::black_box(&image)));
        });
        println!("{w}x{h} RGB: tensor 224x224 {tensor_us:.0} µs, describe {describe_us:.0} µs");
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
