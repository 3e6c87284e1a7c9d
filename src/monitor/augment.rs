//! Altered copies of the labeled reference images, for fitting the correctness model
//! (`monitor::correctness`) at `shiftwatch reference` time: each copy keeps its image's known
//! label, so the model learns how the features of a prediction move when its input degrades.
//!
//! Six kinds at a few severities each ([`SCHEDULE`]): Gaussian blur, gain and offset
//! (brightness and contrast), rotation, zoom, an occluding square, and thicker or thinner strokes (grey dilation and erosion); twelve pairs of them
//! ([`PAIRS`]); and tiles shuffled into an image of no class ([`NEGATIVES`]). Sizes are relative to the image's shorter side, so the
//! same schedule means the same thing for an 8 × 8 digit and a 224 × 224 photograph. Pixels a
//! geometric change uncovers take the mean of the image's border (black for the bundled digits).
//!
//! Deliberately absent, so that they stay shifts the fit never saw in the README's evaluation:
//! inversion, translation, pixelation, JPEG artefacts and noise. Pure.

use image::{DynamicImage, GrayImage, RgbImage};

use crate::stats::random::SplitMix64;

/// One alteration and its strength (its meaning depends on the kind, see [`Kind`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    pub kind: Kind,
    pub strength: f64,
    /// The offset of `GainOffset`, in grey levels (0..255).
    pub offset: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// σ = strength × shorter side / 8.
    Blur,
    /// v ↦ strength · v + offset.
    GainOffset,
    /// strength degrees, either way (drawn).
    Rotate,
    /// Scale by strength about the centre.
    Zoom,
    /// A square of strength × shorter side, black or white (drawn), somewhere (drawn).
    Occlude,
    /// Grey dilation (strength > 0) or erosion (< 0) over a square window of
    /// |strength| × shorter side / 32 pixels (odd, at least 3).
    Stroke,
    /// The image cut into a strength × strength grid of tiles, shuffled (never the identity):
    /// no longer an image of any class, so whatever the model answers counts as wrong.
    Scramble,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Blur => "blur",
            Kind::GainOffset => "gain_offset",
            Kind::Rotate => "rotate",
            Kind::Zoom => "zoom",
            Kind::Occlude => "occlude",
            Kind::Stroke => "stroke",
            Kind::Scramble => "scramble",
        }
    }
}

const fn aug(kind: Kind, strength: f64, offset: f64) -> Augmentation {
    Augmentation {
        kind,
        strength,
        offset,
    }
}

/// Every altered copy made of each reference image, mildest first within a kind.
pub const SCHEDULE: [Augmentation; 22] = [
    aug(Kind::Blur, 0.3, 0.0),
    aug(Kind::Blur, 0.6, 0.0),
    aug(Kind::Blur, 1.0, 0.0),
    aug(Kind::Blur, 1.5, 0.0),
    aug(Kind::GainOffset, 0.5, 0.0),
    aug(Kind::GainOffset, 0.7, 40.0),
    aug(Kind::GainOffset, 1.0, 80.0),
    aug(Kind::GainOffset, 0.6, 120.0),
    aug(Kind::GainOffset, 1.3, -40.0),
    aug(Kind::Rotate, 10.0, 0.0),
    aug(Kind::Rotate, 20.0, 0.0),
    aug(Kind::Rotate, 30.0, 0.0),
    aug(Kind::Rotate, 45.0, 0.0),
    aug(Kind::Occlude, 0.25, 0.0),
    aug(Kind::Occlude, 0.4, 0.0),
    aug(Kind::Occlude, 0.55, 0.0),
    aug(Kind::Zoom, 0.6, 0.0),
    aug(Kind::Zoom, 0.8, 0.0),
    aug(Kind::Zoom, 1.25, 0.0),
    aug(Kind::Stroke, 5.0, 0.0),
    aug(Kind::Stroke, -5.0, 0.0),
    aug(Kind::Stroke, 9.0, 0.0),
];

/// Two alterations in a row, by their index in [`SCHEDULE`]: milder and mixed degradations
/// that no single kind gives (a slightly rotated, slightly blurred digit).
pub const PAIRS: [(usize, usize); 12] = [
    (0, 9),
    (5, 17),
    (13, 19),
    (10, 20),
    (1, 8),
    (18, 14),
    (9, 15),
    (0, 20),
    (16, 5),
    (11, 0),
    (19, 9),
    (14, 8),
];

/// Copies that belong to no class (outlier exposure): the model cannot be right on them.
pub const NEGATIVES: [Augmentation; 1] = [aug(Kind::Scramble, 4.0, 0.0)];

/// Every recipe the fit applies to each reference image: each of [`SCHEDULE`], each of
/// [`PAIRS`], then each of [`NEGATIVES`].
pub fn recipes() -> Vec<Vec<Augmentation>> {
    SCHEDULE
        .iter()
        .map(|a| vec![*a])
        .chain(PAIRS.iter().map(|(a, b)| vec![SCHEDULE[*a], SCHEDULE[*b]]))
        .chain(NEGATIVES.iter().map(|a| vec![*a]))
        .collect()
}

/// Whether a recipe makes an image of no class.
pub fn makes_outlier(recipe: &[Augmentation]) -> bool {
    recipe.iter().any(|a| a.kind == Kind::Scramble)
}

/// A recipe's name: its steps' labels joined by `+`.
pub fn recipe_label(recipe: &[Augmentation]) -> String {
    recipe
        .iter()
        .map(Augmentation::label)
        .collect::<Vec<_>>()
        .join("+")
}

/// Applies a recipe's steps in order.
pub fn apply_recipe(
    recipe: &[Augmentation],
    image: &DynamicImage,
    rng: &mut SplitMix64,
) -> DynamicImage {
    let mut out = image.clone();
    for step in recipe {
        out = step.apply(&out, rng);
    }
    out
}

/// An image as planes of f32 grey levels, interleaved.
struct Pixels {
    w: usize,
    h: usize,
    c: usize,
    v: Vec<f32>,
}

impl Pixels {
    fn from(image: &DynamicImage) -> Pixels {
        let (w, h) = (image.width() as usize, image.height() as usize);
        if image.color().has_color() {
            let rgb = image.to_rgb8();
            Pixels {
                w,
                h,
                c: 3,
                v: rgb.into_raw().into_iter().map(f32::from).collect(),
            }
        } else {
            let g = image.to_luma8();
            Pixels {
                w,
                h,
                c: 1,
                v: g.into_raw().into_iter().map(f32::from).collect(),
            }
        }
    }

    fn into_image(self) -> DynamicImage {
        let raw: Vec<u8> = self
            .v
            .iter()
            .map(|x| x.round().clamp(0.0, 255.0) as u8)
            .collect();
        let (w, h) = (self.w as u32, self.h as u32);
        if self.c == 3 {
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, raw).expect("sized"))
        } else {
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, raw).expect("sized"))
        }
    }

    fn at(&self, x: usize, y: usize, ch: usize) -> f32 {
        self.v[(y * self.w + x) * self.c + ch]
    }

    /// Per channel, the mean of the outermost pixels.
    fn border_mean(&self) -> Vec<f32> {
        let mut sum = vec![0f64; self.c];
        let mut n = 0f64;
        for y in 0..self.h {
            for x in 0..self.w {
                if x == 0 || y == 0 || x + 1 == self.w || y + 1 == self.h {
                    for (ch, s) in sum.iter_mut().enumerate() {
                        *s += f64::from(self.at(x, y, ch));
                    }
                    n += 1.0;
                }
            }
        }
        sum.iter().map(|s| (s / n.max(1.0)) as f32).collect()
    }

    /// Bilinear sample at (x, y) in pixel-centre coordinates; `fill` outside.
    fn sample(&self, x: f64, y: f64, ch: usize, fill: f32) -> f32 {
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
        let get = |xi: f64, yi: f64| -> f32 {
            if xi < 0.0 || yi < 0.0 || xi >= self.w as f64 || yi >= self.h as f64 {
                fill
            } else {
                self.at(xi as usize, yi as usize, ch)
            }
        };
        let top = get(x0, y0) * (1.0 - fx) + get(x0 + 1.0, y0) * fx;
        let bottom = get(x0, y0 + 1.0) * (1.0 - fx) + get(x0 + 1.0, y0 + 1.0) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// Every output pixel from the source point `map(x, y)` gives.
    fn warp(&self, map: impl Fn(f64, f64) -> (f64, f64)) -> Pixels {
        let fill = self.border_mean();
        let mut v = Vec::with_capacity(self.v.len());
        for y in 0..self.h {
            for x in 0..self.w {
                let (sx, sy) = map(x as f64, y as f64);
                for (ch, f) in fill.iter().enumerate() {
                    v.push(self.sample(sx, sy, ch, *f));
                }
            }
        }
        Pixels { v, ..*self }
    }

    /// One separable pass along x (`horizontal`) or y with `reduce` over a window of taps.
    fn pass(&self, horizontal: bool, taps: &[f32], radius: usize, fill: &[f32], op: Op) -> Pixels {
        let mut v = Vec::with_capacity(self.v.len());
        for y in 0..self.h {
            for x in 0..self.w {
                for (ch, f) in fill.iter().enumerate() {
                    let mut acc = match op {
                        Op::Convolve => 0.0,
                        Op::Max => f32::MIN,
                        Op::Min => f32::MAX,
                    };
                    for (t, tap) in taps.iter().enumerate() {
                        let off = t as isize - radius as isize;
                        let (sx, sy) = if horizontal {
                            (x as isize + off, y as isize)
                        } else {
                            (x as isize, y as isize + off)
                        };
                        let inside =
                            sx >= 0 && sy >= 0 && (sx as usize) < self.w && (sy as usize) < self.h;
                        let value = if inside {
                            self.at(sx as usize, sy as usize, ch)
                        } else {
                            *f
                        };
                        acc = match op {
                            Op::Convolve => acc + tap * value,
                            Op::Max => acc.max(value),
                            Op::Min => acc.min(value),
                        };
                    }
                    v.push(acc);
                }
            }
        }
        Pixels { v, ..*self }
    }

    fn separable(&self, taps: &[f32], op: Op) -> Pixels {
        let radius = taps.len() / 2;
        let fill = self.border_mean();
        self.pass(true, taps, radius, &fill, op)
            .pass(false, taps, radius, &fill, op)
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Convolve,
    Max,
    Min,
}

fn gaussian_taps(sigma: f64) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as usize;
    let raw: Vec<f64> = (0..=2 * radius)
        .map(|i| {
            let d = i as f64 - radius as f64;
            (-0.5 * d * d / (sigma * sigma)).exp()
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|x| (x / sum) as f32).collect()
}

impl Augmentation {
    /// Short name with its strength, e.g. `blur_0.6`.
    pub fn label(&self) -> String {
        match self.kind {
            Kind::GainOffset => format!("{}_{}_{}", self.kind.name(), self.strength, self.offset),
            _ => format!("{}_{}", self.kind.name(), self.strength),
        }
    }

    /// The altered copy (same size and colour type: 8-bit grey or RGB).
    pub fn apply(&self, image: &DynamicImage, rng: &mut SplitMix64) -> DynamicImage {
        let px = Pixels::from(image);
        let side = px.w.min(px.h) as f64;
        let (cx, cy) = ((px.w as f64 - 1.0) / 2.0, (px.h as f64 - 1.0) / 2.0);
        let out = match self.kind {
            Kind::Blur => {
                let sigma = (self.strength * side / 8.0).max(0.3);
                px.separable(&gaussian_taps(sigma), Op::Convolve)
            }
            Kind::GainOffset => {
                let (g, o) = (self.strength as f32, self.offset as f32);
                Pixels {
                    v: px.v.iter().map(|x| g * x + o).collect(),
                    ..px
                }
            }
            Kind::Rotate => {
                let sign = if rng.unit() < 0.5 { -1.0 } else { 1.0 };
                let (s, c) = (sign * self.strength).to_radians().sin_cos();
                px.warp(|x, y| {
                    let (dx, dy) = (x - cx, y - cy);
                    (cx + c * dx + s * dy, cy - s * dx + c * dy)
                })
            }
            Kind::Zoom => {
                let z = self.strength.max(0.05);
                px.warp(|x, y| (cx + (x - cx) / z, cy + (y - cy) / z))
            }
            Kind::Occlude => {
                let size = ((self.strength * side).round() as usize).clamp(1, px.w.min(px.h));
                let x0 = ((rng.unit() * (px.w - size + 1) as f64) as usize).min(px.w - size);
                let y0 = ((rng.unit() * (px.h - size + 1) as f64) as usize).min(px.h - size);
                let value = if rng.unit() < 0.5 { 0.0 } else { 255.0 };
                let mut v = px.v.clone();
                for y in y0..y0 + size {
                    for x in x0..x0 + size {
                        for ch in 0..px.c {
                            v[(y * px.w + x) * px.c + ch] = value;
                        }
                    }
                }
                Pixels { v, ..px }
            }
            Kind::Scramble => {
                let g = (self.strength.round() as usize).clamp(2, px.w.min(px.h).max(2));
                let (tw, th) = (px.w / g, px.h / g);
                if tw == 0 || th == 0 {
                    return image.clone();
                }
                let mut order: Vec<usize> = (0..g * g).collect();
                while order.iter().enumerate().all(|(i, t)| i == *t) {
                    rng.shuffle(&mut order);
                }
                let mut v = px.v.clone();
                for (to, from) in order.iter().enumerate() {
                    let (tx, ty) = (to % g * tw, to / g * th);
                    let (fx, fy) = (from % g * tw, from / g * th);
                    for y in 0..th {
                        for x in 0..tw {
                            for ch in 0..px.c {
                                v[((ty + y) * px.w + tx + x) * px.c + ch] =
                                    px.v[((fy + y) * px.w + fx + x) * px.c + ch];
                            }
                        }
                    }
                }
                Pixels { v, ..px }
            }
            Kind::Stroke => {
                let mut size = ((self.strength.abs() * side / 32.0).round() as usize).max(3);
                if size.is_multiple_of(2) {
                    size += 1;
                }
                let taps = vec![0f32; size];
                let op = if self.strength > 0.0 {
                    Op::Max
                } else {
                    Op::Min
                };
                px.separable(&taps, op)
            }
        };
        out.into_image()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit() -> DynamicImage {
        // A bright vertical bar on a dark grey ground, 32 × 32 (an occluding square, black or
        // white, always shows).
        let mut g = GrayImage::from_pixel(32, 32, image::Luma([40]));
        for y in 6..26 {
            for x in 14..18 {
                g.put_pixel(x, y, image::Luma([240]));
            }
        }
        DynamicImage::ImageLuma8(g)
    }

    fn mean(image: &DynamicImage) -> f64 {
        let g = image.to_luma8();
        g.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() / g.as_raw().len() as f64
    }

    #[test]
    fn every_kind_keeps_size_and_colour_type_and_changes_the_image() {
        let d = digit();
        let mut rng = SplitMix64::new(3);
        for a in SCHEDULE {
            let out = a.apply(&d, &mut rng);
            assert_eq!((out.width(), out.height()), (32, 32), "{}", a.label());
            assert!(matches!(out, DynamicImage::ImageLuma8(_)), "{}", a.label());
            assert_ne!(
                out.to_luma8().as_raw(),
                d.to_luma8().as_raw(),
                "{}",
                a.label()
            );
        }
        let scrambled = NEGATIVES[0].apply(&d, &mut rng);
        assert_ne!(scrambled.to_luma8().as_raw(), d.to_luma8().as_raw());
        assert_eq!(mean(&scrambled), mean(&d), "tiles move, pixels stay");
        let rgb = DynamicImage::ImageRgb8(d.to_rgb8());
        let out = SCHEDULE[0].apply(&rgb, &mut rng);
        assert!(matches!(out, DynamicImage::ImageRgb8(_)));
    }

    #[test]
    fn blur_keeps_mass_and_gain_offset_is_exact() {
        let d = digit();
        let mut rng = SplitMix64::new(1);
        let blurred = aug(Kind::Blur, 0.3, 0.0).apply(&d, &mut rng);
        // The border is the fill: blurring keeps the mean (±rounding).
        assert!((mean(&blurred) - mean(&d)).abs() < 0.5);
        let g = aug(Kind::GainOffset, 0.5, 10.0)
            .apply(&d, &mut rng)
            .to_luma8();
        assert_eq!(g.get_pixel(15, 10).0[0], 130);
        assert_eq!(g.get_pixel(0, 0).0[0], 30);
    }

    #[test]
    fn rotation_by_a_right_angle_turns_the_bar() {
        let d = digit();
        let mut rng = SplitMix64::new(5);
        let r = aug(Kind::Rotate, 90.0, 0.0).apply(&d, &mut rng).to_luma8();
        // Vertical bar (x 14..18, y 6..26) becomes horizontal through the centre.
        assert_eq!(r.get_pixel(8, 15).0[0], 240);
        assert_eq!(r.get_pixel(15, 8).0[0], 40);
    }

    #[test]
    fn stroke_thickens_and_thins() {
        let d = digit();
        let mut rng = SplitMix64::new(5);
        let thick = aug(Kind::Stroke, 5.0, 0.0).apply(&d, &mut rng);
        let thin = aug(Kind::Stroke, -5.0, 0.0).apply(&d, &mut rng);
        assert!(mean(&thick) > mean(&d) * 1.3);
        assert!((mean(&thin) - 40.0).abs() < 1e-9, "the bar is gone");
    }
}
