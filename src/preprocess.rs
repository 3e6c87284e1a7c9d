//! Image bytes to model input: decode under limits, EXIF orientation, colour, resize, scale, layout.
//!
//! Pure: no IO, no ONNX Runtime. Every step is defined here exactly (the resize filters and the
//! grayscale weights included) so that training code can reproduce it bit for bit; see
//! `training/README.md` for the Python side.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

/// `[limits]`: what an image may cost, checked before and while decoding.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_image_width: u32,
    pub max_image_height: u32,
    pub max_image_pixels: u64,
    pub max_decode_bytes: u64,
    /// Bytes of decoded pixels and their working copies, all images being decoded together:
    /// an image waits for its share (weighted by its decoded size), then gets 503.
    pub decode_budget_bytes: u64,
    /// Longest an image waits for the decode budget before 503.
    pub decode_wait_seconds: f64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_image_width: 8192,
            max_image_height: 8192,
            max_image_pixels: 40_000_000,
            max_decode_bytes: 256 * 1024 * 1024,
            decode_budget_bytes: 512 * 1024 * 1024,
            decode_wait_seconds: 2.0,
        }
    }
}

impl RawLimits {
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> DecodeLimits {
        for (key, v) in [
            ("limits.max_image_width", u64::from(self.max_image_width)),
            ("limits.max_image_height", u64::from(self.max_image_height)),
            ("limits.max_image_pixels", self.max_image_pixels),
            ("limits.max_decode_bytes", self.max_decode_bytes),
            ("limits.decode_budget_bytes", self.decode_budget_bytes),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if self.decode_budget_bytes < self.max_decode_bytes {
            bad(
                "limits.decode_budget_bytes",
                format!(
                    "must be at least limits.max_decode_bytes ({}), or the largest image allowed could never be decoded",
                    self.max_decode_bytes
                ),
            );
        }
        let wait = self.decode_wait_seconds;
        if !(wait.is_finite() && (0.0..=3600.0).contains(&wait)) {
            bad(
                "limits.decode_wait_seconds",
                "must be a number of seconds from 0 to 3600".into(),
            );
        }
        DecodeLimits {
            max_width: self.max_image_width,
            max_height: self.max_image_height,
            max_pixels: self.max_image_pixels,
            max_alloc_bytes: self.max_decode_bytes,
            decode_budget_bytes: self.decode_budget_bytes,
            decode_wait: std::time::Duration::from_secs_f64(if wait.is_finite() {
                wait.clamp(0.0, 3600.0)
            } else {
                0.0
            }),
        }
    }
}

/// Limits applied before and while decoding an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    pub max_alloc_bytes: u64,
    pub decode_budget_bytes: u64,
    pub decode_wait: std::time::Duration,
}

/// A byte budget shared by every image being decoded: an image takes what its decode will
/// cost before any pixel is decoded and gives it back when its tensor and statistics are made.
/// Waiting is blocking (callers are on the blocking pool) and bounded.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
    gauge: Option<prometheus::IntGauge>,
}

/// A share of a [`MemoryBudget`], returned on drop.
#[derive(Debug)]
pub struct BudgetGrant {
    budget: std::sync::Arc<MemoryBudget>,
    bytes: u64,
    /// Whether the grant had to wait for others to finish.
    pub waited: bool,
}

impl Drop for BudgetGrant {
    fn drop(&mut self) {
        let mut used = self
            .budget
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *used -= self.bytes;
        if let Some(g) = &self.budget.gauge {
            g.set(i64::try_from(*used).unwrap_or(i64::MAX));
        }
        drop(used);
        self.budget.freed.notify_all();
    }
}

impl MemoryBudget {
    /// A budget of `total` bytes; `gauge` follows the bytes held.
    pub fn new(total: u64, gauge: Option<prometheus::IntGauge>) -> Self {
        MemoryBudget {
            total,
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            gauge,
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes held now.
    pub fn in_use(&self) -> u64 {
        *self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `bytes`, waiting at most `wait` for others to give theirs back. `TooLarge` when
    /// `bytes` is more than the whole budget (it could never fit), `Busy` after the wait.
    pub fn acquire(
        self: &std::sync::Arc<Self>,
        bytes: u64,
        wait: std::time::Duration,
    ) -> Result<BudgetGrant, PreprocessError> {
        if bytes > self.total {
            return Err(PreprocessError::TooLarge(format!(
                "decoding it needs about {bytes} bytes, more than the whole decode budget of {} (limits.decode_budget_bytes)",
                self.total
            )));
        }
        let deadline = std::time::Instant::now() + wait;
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut waited = false;
        while *used + bytes > self.total {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(PreprocessError::Busy(format!(
                    "the decode budget is in use by other images (this one needs about {bytes} bytes); retry later"
                )));
            }
            waited = true;
            used = self
                .freed
                .wait_timeout(used, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *used += bytes;
        if let Some(g) = &self.gauge {
            g.set(i64::try_from(*used).unwrap_or(i64::MAX));
        }
        Ok(BudgetGrant {
            budget: std::sync::Arc::clone(self),
            bytes,
            waited,
        })
    }
}

/// Memory order of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// Channels the model expects, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Rgb,
    Bgr,
    Grayscale,
}

impl Color {
    pub fn channels(self) -> usize {
        match self {
            Color::Grayscale => 1,
            Color::Rgb | Color::Bgr => 3,
        }
    }
}

/// How the decoded image is brought to the model's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Box filter: each output pixel is the mean of the source area it covers, partial pixels
    /// weighted by their overlap. Exact for integer downscale factors.
    Area,
    /// Linear interpolation between the two nearest source pixels, pixel centres at +0.5,
    /// edges clamped (no antialiasing).
    Bilinear,
    /// The source pixel whose area contains the output pixel's centre.
    Nearest,
}

impl Layout {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nchw" => Some(Layout::Nchw),
            "nhwc" => Some(Layout::Nhwc),
            _ => None,
        }
    }
}

impl Color {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rgb" => Some(Color::Rgb),
            "bgr" => Some(Color::Bgr),
            "grayscale" => Some(Color::Grayscale),
            _ => None,
        }
    }
}

impl Resize {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "area" => Some(Resize::Area),
            "bilinear" => Some(Resize::Bilinear),
            "nearest" => Some(Resize::Nearest),
            _ => None,
        }
    }
}

/// The model's preprocessing: input value = (pixel × scale − mean\[c\]) / std\[c\].
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub width: u32,
    pub height: u32,
    pub color: Color,
    pub layout: Layout,
    pub resize: Resize,
    pub scale: f32,
    /// One value per channel (already broadcast).
    pub mean: Vec<f32>,
    /// One value per channel (already broadcast).
    pub std: Vec<f32>,
}

impl Preprocess {
    /// Number of f32 values one image occupies in the input tensor.
    pub fn tensor_len(&self) -> usize {
        self.width as usize * self.height as usize * self.color.channels()
    }

    /// The per-image tensor shape (without the batch dimension).
    pub fn image_shape(&self) -> [i64; 3] {
        let (c, h, w) = (
            self.color.channels() as i64,
            i64::from(self.height),
            i64::from(self.width),
        );
        match self.layout {
            Layout::Nchw => [c, h, w],
            Layout::Nhwc => [h, w, c],
        }
    }
}

/// Why an image could not be turned into a tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreprocessError {
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("cannot decode image: {0}")]
    BadImage(String),
    #[error("image too large: {0}")]
    TooLarge(String),
    /// The shared decode budget stayed full: the same image may succeed later.
    #[error("busy: {0}")]
    Busy(String),
}

/// The image formats served, by media type (parameters such as `; charset` ignored).
pub fn format_for_media_type(media_type: &str) -> Option<ImageFormat> {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" | "image/jpg" => Some(ImageFormat::Jpeg),
        "image/webp" => Some(ImageFormat::WebP),
        "image/gif" => Some(ImageFormat::Gif),
        "image/bmp" | "image/x-ms-bmp" => Some(ImageFormat::Bmp),
        "image/tiff" => Some(ImageFormat::Tiff),
        _ => None,
    }
}

/// A decoded image, upright (EXIF orientation applied).
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub image: DynamicImage,
    pub format: ImageFormat,
}

impl DecodedImage {
    pub fn width(&self) -> u32 {
        self.image.width()
    }
    pub fn height(&self) -> u32 {
        self.image.height()
    }
}

/// Decodes `bytes`. The format is sniffed from the content (falling back to `declared`); the
/// dimensions and the decoder's memory are checked against `limits` before any pixel is decoded.
pub fn decode(
    bytes: &[u8],
    declared: Option<ImageFormat>,
    limits: &DecodeLimits,
) -> Result<DecodedImage, PreprocessError> {
    decode_admitted(bytes, declared, limits, |_| Ok(())).map(|(image, ())| image)
}

/// Like [`decode`], and `admit` is called with what the decode and the work on its pixels will
/// cost in bytes ([`decode_cost`]) once the header is read and before any pixel is decoded; its
/// grant is returned with the image, to be dropped when the work is done.
pub fn decode_admitted<G>(
    bytes: &[u8],
    declared: Option<ImageFormat>,
    limits: &DecodeLimits,
    admit: impl FnOnce(u64) -> Result<G, PreprocessError>,
) -> Result<(DecodedImage, G), PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::BadImage("the body is empty".into()));
    }
    // Decoders are third-party code fed hostile bytes: a panic in one must not take a worker down.
    match catch_unwind(AssertUnwindSafe(|| {
        decode_inner(bytes, declared, limits, admit)
    })) {
        Ok(result) => result,
        Err(_) => Err(PreprocessError::BadImage(
            "the decoder failed on malformed data".into(),
        )),
    }
}

/// Bytes that decoding an image of this header and then making its tensor, statistics and
/// hash hold at the peak: the decoded pixels (twice when EXIF orientation turns them; three
/// times for JPEG, whose progressive form keeps its coefficients beside them), an 8-bit RGB
/// copy when the pixels are in another form, and the resize's row buffers.
pub fn decode_cost(
    format: ImageFormat,
    width: u32,
    height: u32,
    decoded_bytes: u64,
    direct: bool,
    turned: bool,
) -> u64 {
    let pixels = u64::from(width) * u64::from(height);
    let decoded = decoded_bytes
        * match (format, turned) {
            (ImageFormat::Jpeg, true) => 4,
            (ImageFormat::Jpeg, false) => 3,
            (_, true) => 2,
            (_, false) => 1,
        };
    let conversion = if direct { 0 } else { pixels * 3 };
    // The horizontal pass of a resize: one f32 row of at most STATS_MAX_SIDE (or the model's
    // width, when larger is rare) per source row.
    let rows = u64::from(height) * 4 * 1024;
    decoded + conversion + rows
}

fn decode_inner<G>(
    bytes: &[u8],
    declared: Option<ImageFormat>,
    limits: &DecodeLimits,
    admit: impl FnOnce(u64) -> Result<G, PreprocessError>,
) -> Result<(DecodedImage, G), PreprocessError> {
    let mut reader = ImageReader::new(Cursor::new(bytes));
    if let Some(format) = declared {
        reader.set_format(format);
    }
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| PreprocessError::BadImage(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(PreprocessError::UnsupportedMediaType(
            "the content is not a recognised image format".into(),
        ));
    };
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_width);
    decoder_limits.max_image_height = Some(limits.max_height);
    decoder_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(decoder_limits);

    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(PreprocessError::BadImage(format!(
            "the image has no pixels ({width}x{height})"
        )));
    }
    if width > limits.max_width || height > limits.max_height {
        return Err(PreprocessError::TooLarge(format!(
            "{width}x{height} exceeds the limit of {}x{}",
            limits.max_width, limits.max_height
        )));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(PreprocessError::TooLarge(format!(
            "{width}x{height} = {pixels} pixels exceeds the limit of {}",
            limits.max_pixels
        )));
    }
    if decoder.total_bytes() > limits.max_alloc_bytes {
        return Err(PreprocessError::TooLarge(format!(
            "decoding needs {} bytes, over the limit of {}",
            decoder.total_bytes(),
            limits.max_alloc_bytes
        )));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let direct = matches!(
        decoder.color_type(),
        image::ColorType::L8 | image::ColorType::Rgb8
    );
    let turned = orientation != image::metadata::Orientation::NoTransforms;
    let grant = admit(decode_cost(
        format,
        width,
        height,
        decoder.total_bytes(),
        direct,
        turned,
    ))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    image.apply_orientation(orientation);
    Ok((DecodedImage { image, format }, grant))
}

fn image_error(e: ImageError) -> PreprocessError {
    match e {
        ImageError::Limits(e) => PreprocessError::TooLarge(e.to_string()),
        ImageError::Unsupported(e) => PreprocessError::UnsupportedMediaType(e.to_string()),
        other => PreprocessError::BadImage(other.to_string()),
    }
}

/// Grayscale from RGB with the ITU-R 601-2 weights in the 16-bit fixed point Pillow uses for
/// `convert("L")`, so a model trained on Pillow's grayscale sees the same values here.
pub fn luma_601(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Writes the model input for one image into `out` (length [`Preprocess::tensor_len`]).
pub fn to_tensor(image: &DynamicImage, spec: &Preprocess, out: &mut [f32]) {
    assert_eq!(
        out.len(),
        spec.tensor_len(),
        "output slice has the wrong length"
    );
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
    let (dst_w, dst_h) = (spec.width as usize, spec.height as usize);
    let channels = spec.color.channels();

    // The 8-bit pixels are read where they lie (gray or RGB); any other form is converted to
    // 8-bit RGB once. No float copy of the source is made: its cost is what the decode budget
    // counts (`decode_cost`).
    let converted;
    let (pixels, stride): (&[u8], usize) = match image {
        DynamicImage::ImageLuma8(gray) => (gray.as_raw(), 1),
        DynamicImage::ImageRgb8(rgb) => (rgb.as_raw(), 3),
        other => {
            converted = other.to_rgb8();
            (converted.as_raw(), 3)
        }
    };

    let columns = resize_weights(src_w, dst_w, spec.resize);
    let rows = resize_weights(src_h, dst_h, spec.resize);
    // A colour model on RGB pixels: the horizontal pass of all three channels reads each source
    // row once (one pass per channel read it three times: a fifth of a 224×224 model's request
    // CPU went there). Each channel's sums are made in the same order as below, so the values
    // are the same to the bit.
    let rgb_once = channels == 3 && stride == 3 && spec.color != Color::Grayscale;
    let mut all_channels = Vec::new();
    if rgb_once {
        all_channels = vec![0f32; 3 * src_h * dst_w];
        let plane = src_h * dst_w;
        for y in 0..src_h {
            let row = &pixels[y * src_w * 3..(y + 1) * src_w * 3];
            for (x, w) in columns.iter().enumerate() {
                let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
                let mut i = w.start * 3;
                for &wt in &w.weights[..] {
                    r += wt * f32::from(row[i]);
                    g += wt * f32::from(row[i + 1]);
                    b += wt * f32::from(row[i + 2]);
                    i += 3;
                }
                let at = y * dst_w + x;
                all_channels[at] = r;
                all_channels[plane + at] = g;
                all_channels[2 * plane + at] = b;
            }
        }
    }
    let mut horizontal = vec![0f32; if rgb_once { 0 } else { src_h * dst_w }];
    for c in 0..channels {
        // Which source value feeds the model's channel `c`: gray as it is, gray from RGB by the
        // 601 weights, gray repeated into R, G and B, or the RGB channel in the model's order.
        let source = match (spec.color, stride) {
            (Color::Grayscale, 3) => None,
            (_, 1) => Some(0),
            (Color::Bgr, _) => Some(2 - c),
            _ => Some(c),
        };
        let horizontal: &[f32] = if rgb_once {
            let k = source.unwrap_or(c);
            &all_channels[k * src_h * dst_w..(k + 1) * src_h * dst_w]
        } else {
            horizontal_pass(
                pixels,
                stride,
                source,
                src_w,
                src_h,
                dst_w,
                &columns,
                &mut horizontal,
            );
            &horizontal
        };
        // Vertical pass, written straight into the tensor.
        let (mean, std) = (spec.mean[c], spec.std[c]);
        for (y, w) in rows.iter().enumerate() {
            for x in 0..dst_w {
                let pixel = w.apply(|i| horizontal[i * dst_w + x]);
                let value = (pixel * spec.scale - mean) / std;
                let idx = match spec.layout {
                    Layout::Nchw => (c * dst_h + y) * dst_w + x,
                    Layout::Nhwc => (y * dst_w + x) * channels + c,
                };
                out[idx] = value;
            }
        }
    }
}

/// The horizontal pass of one channel (`source`: the byte of a pixel that feeds it; `None`: gray
/// from RGB by the 601 weights): `src_h` × `dst_w` sums into `into`.
#[allow(clippy::too_many_arguments)]
fn horizontal_pass(
    pixels: &[u8],
    stride: usize,
    source: Option<usize>,
    src_w: usize,
    src_h: usize,
    dst_w: usize,
    columns: &[Taps],
    into: &mut [f32],
) {
    let horizontal = into;
    for y in 0..src_h {
        let row = &pixels[y * src_w * stride..(y + 1) * src_w * stride];
        let out_row = &mut horizontal[y * dst_w..(y + 1) * dst_w];
        // Plain index loops: this pass reads every source pixel, and is the cost of a
        // large image (also in a debug build, where each iterator step is a call).
        for (out, w) in out_row.iter_mut().zip(columns) {
            let weights = &w.weights[..];
            let mut acc = 0f32;
            let mut i = w.start * stride;
            match source {
                Some(k) => {
                    let taps = &row[i + k..];
                    let mut t = 0;
                    for &wt in weights {
                        acc += wt * f32::from(taps[t]);
                        t += stride;
                    }
                }
                None => {
                    for &wt in weights {
                        acc += wt * f32::from(luma_601(row[i], row[i + 1], row[i + 2]));
                        i += 3;
                    }
                }
            }
            *out = acc;
        }
    }
}

/// The source pixels one output pixel reads, with their weights (summing to 1).
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

impl Taps {
    #[inline]
    fn apply(&self, read: impl Fn(usize) -> f32) -> f32 {
        if self.weights.len() == 1 {
            return read(self.start);
        }
        let mut acc = 0f32;
        for (k, w) in self.weights.iter().enumerate() {
            acc += w * read(self.start + k);
        }
        acc
    }
}

fn resize_weights(src: usize, dst: usize, filter: Resize) -> Vec<Taps> {
    if src == dst {
        return (0..dst)
            .map(|i| Taps {
                start: i,
                weights: vec![1.0],
            })
            .collect();
    }
    let ratio = src as f64 / dst as f64;
    (0..dst)
        .map(|o| match filter {
            Resize::Nearest => {
                let i = (((o as f64 + 0.5) * ratio).floor() as usize).min(src - 1);
                Taps {
                    start: i,
                    weights: vec![1.0],
                }
            }
            Resize::Bilinear => {
                let pos = ((o as f64 + 0.5) * ratio - 0.5).clamp(0.0, (src - 1) as f64);
                let i0 = pos.floor() as usize;
                let frac = pos - i0 as f64;
                if i0 + 1 >= src || frac == 0.0 {
                    Taps {
                        start: i0,
                        weights: vec![1.0],
                    }
                } else {
                    Taps {
                        start: i0,
                        weights: vec![(1.0 - frac) as f32, frac as f32],
                    }
                }
            }
            Resize::Area => {
                let lo = o as f64 * ratio;
                let hi = ((o + 1) as f64 * ratio).min(src as f64);
                let first = lo.floor() as usize;
                let last = (hi.ceil() as usize).clamp(first + 1, src);
                let weights: Vec<f32> = (first..last)
                    .map(|i| {
                        let overlap = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                        (overlap / (hi - lo)) as f32
                    })
                    .collect();
                Taps {
                    start: first,
                    weights,
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn spec(w: u32, h: u32, color: Color, layout: Layout, resize: Resize) -> Preprocess {
        let c = color.channels();
        Preprocess {
            width: w,
            height: h,
            color,
            layout,
            resize,
            scale: 1.0,
            mean: vec![0.0; c],
            std: vec![1.0; c],
        }
    }

    const LIMITS: DecodeLimits = DecodeLimits {
        max_width: 1000,
        max_height: 1000,
        max_pixels: 100_000,
        max_alloc_bytes: 64 * 1024 * 1024,
        decode_budget_bytes: 1 << 30,
        decode_wait: std::time::Duration::ZERO,
    };

    fn png(image: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn area_downscale_of_blocks_is_exact() {
        // An 8x8 pattern upscaled 4x by nearest neighbour comes back exactly.
        let small = GrayImage::from_fn(8, 8, |x, y| Luma([((x * 8 + y) * 3) as u8]));
        let big = GrayImage::from_fn(32, 32, |x, y| *small.get_pixel(x / 4, y / 4));
        let s = spec(8, 8, Color::Grayscale, Layout::Nchw, Resize::Area);
        let mut out = vec![0.0; 64];
        to_tensor(&DynamicImage::ImageLuma8(big), &s, &mut out);
        for y in 0..8 {
            for x in 0..8 {
                assert_eq!(
                    out[y * 8 + x],
                    f32::from(small.get_pixel(x as u32, y as u32)[0])
                );
            }
        }
    }

    #[test]
    fn area_weights_cover_fractional_pixels() {
        let taps = resize_weights(3, 2, Resize::Area);
        assert_eq!(taps[0].start, 0);
        assert_eq!(taps[0].weights.len(), 2);
        assert!((taps[0].weights[0] - 2.0 / 3.0).abs() < 1e-6);
        assert!((taps[0].weights[1] - 1.0 / 3.0).abs() < 1e-6);
        for t in resize_weights(37, 5, Resize::Area) {
            let sum: f32 = t.weights.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn bilinear_and_nearest_follow_their_definitions() {
        // 4 → 2: bilinear samples at 0.5 and 2.5 → mean of neighbours.
        let t = resize_weights(4, 2, Resize::Bilinear);
        assert_eq!((t[0].start, t[0].weights.clone()), (0, vec![0.5, 0.5]));
        assert_eq!((t[1].start, t[1].weights.clone()), (2, vec![0.5, 0.5]));
        let n = resize_weights(4, 2, Resize::Nearest);
        assert_eq!((n[0].start, n[1].start), (1, 3));
    }

    #[test]
    fn layouts_scaling_and_channel_order() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgb([10, 20, 30])
            } else {
                Rgb([40, 50, 60])
            }
        });
        let img = DynamicImage::ImageRgb8(img);
        let mut s = spec(2, 1, Color::Rgb, Layout::Nchw, Resize::Area);
        s.scale = 0.5;
        s.mean = vec![1.0, 2.0, 3.0];
        s.std = vec![2.0, 2.0, 2.0];
        let mut out = vec![0.0; 6];
        to_tensor(&img, &s, &mut out);
        assert_eq!(out, vec![2.0, 9.5, 4.0, 11.5, 6.0, 13.5]);
        s.layout = Layout::Nhwc;
        to_tensor(&img, &s, &mut out);
        assert_eq!(out, vec![2.0, 4.0, 6.0, 9.5, 11.5, 13.5]);
        s.color = Color::Bgr;
        to_tensor(&img, &s, &mut out);
        // BGR: channel 0 is blue, normalised with mean[0]/std[0].
        assert_eq!(out[0], (30.0 * 0.5 - 1.0) / 2.0);
        assert_eq!(out[2], (10.0 * 0.5 - 3.0) / 2.0);
    }

    #[test]
    fn grayscale_uses_pillow_weights() {
        assert_eq!(luma_601(255, 255, 255), 255);
        assert_eq!(luma_601(0, 0, 0), 0);
        // Pillow: Image.new("RGB", (1, 1), (200, 100, 50)).convert("L") → 124
        assert_eq!(luma_601(200, 100, 50), 124);
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, Rgb([200, 100, 50])));
        let mut out = vec![0.0; 1];
        to_tensor(
            &img,
            &spec(1, 1, Color::Grayscale, Layout::Nchw, Resize::Area),
            &mut out,
        );
        assert_eq!(out[0], 124.0);
    }

    #[test]
    fn decode_round_trips_and_sniffs() {
        let img = DynamicImage::ImageLuma8(GrayImage::from_fn(5, 3, |x, y| Luma([(x + y) as u8])));
        let bytes = png(&img);
        // A wrong declared type is overridden by the content.
        let d = decode(&bytes, Some(ImageFormat::Jpeg), &LIMITS).unwrap();
        assert_eq!((d.width(), d.height(), d.format), (5, 3, ImageFormat::Png));
    }

    #[test]
    fn hostile_inputs_are_errors_not_panics() {
        assert!(matches!(
            decode(b"", None, &LIMITS),
            Err(PreprocessError::BadImage(_))
        ));
        assert!(matches!(
            decode(b"hello, not an image", None, &LIMITS),
            Err(PreprocessError::UnsupportedMediaType(_))
        ));
        let bytes = png(&DynamicImage::ImageLuma8(GrayImage::new(40, 40)));
        for cut in [8, 20, 33, bytes.len() - 5] {
            let r = decode(&bytes[..cut], None, &LIMITS);
            assert!(
                matches!(r, Err(PreprocessError::BadImage(_))),
                "cut {cut}: {r:?}"
            );
        }
        let wide = png(&DynamicImage::ImageLuma8(GrayImage::new(1001, 1)));
        assert!(matches!(
            decode(&wide, None, &LIMITS),
            Err(PreprocessError::TooLarge(_))
        ));
        let many = png(&DynamicImage::ImageLuma8(GrayImage::new(400, 400)));
        assert!(matches!(
            decode(&many, None, &LIMITS),
            Err(PreprocessError::TooLarge(_))
        ));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A PNG with an `eXIf` chunk saying "rotate 90° clockwise" (EXIF orientation 6).
    fn png_with_orientation(image: &DynamicImage, orientation: u16) -> Vec<u8> {
        let plain = png(image);
        // Big-endian TIFF header, one IFD entry: tag 0x0112 (orientation), SHORT, count 1.
        let mut exif =
            b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
        exif.extend_from_slice(&orientation.to_be_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut chunk = (exif.len() as u32).to_be_bytes().to_vec();
        let mut body = b"eXIf".to_vec();
        body.extend_from_slice(&exif);
        chunk.extend_from_slice(&body);
        chunk.extend_from_slice(&crc32(&body).to_be_bytes());
        // Insert after the signature (8 bytes) and IHDR (4 + 4 + 13 + 4 bytes).
        let at = 8 + 25;
        let mut out = plain[..at].to_vec();
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&plain[at..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        // 2 wide, 1 high: black then white. Rotated 90° clockwise it is 1 wide, 2 high, black on top.
        let img = DynamicImage::ImageLuma8(GrayImage::from_fn(2, 1, |x, _| {
            Luma([if x == 0 { 0 } else { 255 }])
        }));
        let d = decode(&png_with_orientation(&img, 6), None, &LIMITS).unwrap();
        assert_eq!((d.width(), d.height()), (1, 2));
        let gray = d.image.to_luma8();
        assert_eq!((gray.get_pixel(0, 0)[0], gray.get_pixel(0, 1)[0]), (0, 255));
        // Orientation 1 leaves it as it is.
        let d = decode(&png_with_orientation(&img, 1), None, &LIMITS).unwrap();
        assert_eq!((d.width(), d.height()), (2, 1));
    }

    #[test]
    fn media_types() {
        assert_eq!(format_for_media_type("image/png"), Some(ImageFormat::Png));
        assert_eq!(
            format_for_media_type("IMAGE/JPEG; q=1"),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(format_for_media_type("text/plain"), None);
    }
}

/// Hostile bytes: thousands of deterministic corruptions of real images of every served format.
#[cfg(test)]
mod corruption {
    use super::*;
    use crate::stats::random::SplitMix64;

    #[test]
    fn corrupted_images_never_panic() {
        let limits = DecodeLimits {
            max_width: 4096,
            max_height: 4096,
            max_pixels: 4_000_000,
            max_alloc_bytes: 64 * 1024 * 1024,
            decode_budget_bytes: 1 << 30,
            decode_wait: std::time::Duration::ZERO,
        };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let base = image::open(root.join("tests/data/rgb-cnn/pattern.png")).unwrap();
        let mut seeds = Vec::new();
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::WebP,
            ImageFormat::Gif,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
        ] {
            let mut bytes = Vec::new();
            let img = if matches!(format, ImageFormat::WebP | ImageFormat::Gif) {
                DynamicImage::ImageRgba8(base.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(base.to_rgb8())
            };
            img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
            seeds.push((format, bytes));
        }
        let mut rng = SplitMix64::new(2024);
        let (mut ok, mut rejected) = (0, 0);
        for (format, bytes) in &seeds {
            for _ in 0..400 {
                let mut b = bytes.clone();
                match rng.below(4) {
                    // Flip a few bytes.
                    0 => {
                        for _ in 0..1 + rng.below(8) {
                            let i = rng.below(b.len() as u64) as usize;
                            b[i] ^= 1 << rng.below(8);
                        }
                    }
                    // Cut it short.
                    1 => b.truncate(rng.below(b.len() as u64) as usize),
                    // Overwrite a header-sized stretch with random bytes.
                    2 => {
                        let start = rng.below(64.min(b.len() as u64)) as usize;
                        for v in b.iter_mut().skip(start).take(16) {
                            *v = rng.below(256) as u8;
                        }
                    }
                    // Duplicate a chunk in the middle.
                    _ => {
                        let i = rng.below(b.len() as u64) as usize;
                        let chunk: Vec<u8> = b[i..(i + 32).min(b.len())].to_vec();
                        b.splice(i..i, chunk);
                    }
                }
                match decode(&b, Some(*format), &limits) {
                    Ok(d) => {
                        // Whatever decodes must also preprocess.
                        let spec = Preprocess {
                            width: 8,
                            height: 8,
                            color: Color::Rgb,
                            layout: Layout::Nchw,
                            resize: Resize::Area,
                            scale: 1.0,
                            mean: vec![0.0; 3],
                            std: vec![1.0; 3],
                        };
                        let mut out = vec![0.0; spec.tensor_len()];
                        to_tensor(&d.image, &spec, &mut out);
                        assert!(out.iter().all(|v| v.is_finite()));
                        ok += 1;
                    }
                    Err(_) => rejected += 1,
                }
            }
        }
        println!("2400 corrupted images: {ok} still decoded, {rejected} rejected with an error");
        assert_eq!(ok + rejected, 2400);
        assert!(rejected > 500, "the corruptions are real: {rejected}");
    }
}
