//! Image bytes to model input: decode under limits, EXIF orientation, colour, resize, scale, layout.
//!
//! Pure: no IO, no ONNX Runtime. Every step is defined here exactly (the resize filters and the
//! grayscale weights included) so that training code can reproduce it bit for bit; see
//! `training/README.md` for the Python side.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

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
    let (dst_w, dst_h) = (spec.width as usize, spec.height as usize);
    let channels = spec.color.channels();
    let mut plane_row = vec![0f32; dst_w];
    resize_rows(
        image,
        dst_w,
        dst_h,
        spec.color,
        spec.resize,
        |y, planes, row| {
            // Which resized value feeds the model's channel `c`.
            let plane_of = |c: usize| match (planes, spec.color) {
                (1, _) => 0,
                (_, Color::Bgr) => 2 - c,
                _ => c,
            };
            for c in 0..channels {
                let (mean, std, p) = (spec.mean[c], spec.std[c], plane_of(c));
                let values: &[f32] = if planes == 1 {
                    row
                } else {
                    for (v, a) in plane_row.iter_mut().zip(row[p..].iter().step_by(planes)) {
                        *v = *a;
                    }
                    &plane_row
                };
                match spec.layout {
                    Layout::Nchw => {
                        let dst = &mut out[(c * dst_h + y) * dst_w..(c * dst_h + y + 1) * dst_w];
                        for (o, a) in dst.iter_mut().zip(values) {
                            *o = (a * spec.scale - mean) / std;
                        }
                    }
                    Layout::Nhwc => {
                        let dst = &mut out[y * dst_w * channels..(y + 1) * dst_w * channels];
                        for (o, a) in dst[c..].iter_mut().step_by(channels).zip(values) {
                            *o = (a * spec.scale - mean) / std;
                        }
                    }
                }
            }
        },
    );
}

/// The image resized to `width` × `height` in `color` (gray: one byte a pixel; RGB or BGR: three)
/// and rounded back to 8 bits: the values [`to_tensor`] gives with a scale of 1, no mean and a
/// std of 1 (NHWC), rounded half away from zero and clamped to 0..=255.
pub fn resize_to_bytes(
    image: &DynamicImage,
    width: u32,
    height: u32,
    color: Color,
    resize: Resize,
) -> Vec<u8> {
    let row_len = width as usize * color.channels();
    let mut bytes = vec![0u8; row_len * height as usize];
    resize_rows(
        image,
        width as usize,
        height as usize,
        color,
        resize,
        |y, planes, row| {
            let dst = &mut bytes[y * row_len..(y + 1) * row_len];
            match (planes, color) {
                (3, Color::Bgr) => {
                    for (b, v) in dst.chunks_exact_mut(3).zip(row.chunks_exact(3)) {
                        b[0] = round_to_byte(v[2]);
                        b[1] = round_to_byte(v[1]);
                        b[2] = round_to_byte(v[0]);
                    }
                }
                (3, _) => {
                    for (b, &v) in dst.iter_mut().zip(row) {
                        *b = round_to_byte(v);
                    }
                }
                // One value a pixel, repeated into each of the colour's channels.
                _ => {
                    let channels = color.channels();
                    for (b, &v) in dst.chunks_exact_mut(channels).zip(row) {
                        b.fill(round_to_byte(v));
                    }
                }
            }
        },
    );
    bytes
}

/// `v.round().clamp(0.0, 255.0) as u8` without a call to libm's `roundf` (baseline x86-64 has
/// no rounding instruction, and the call was a tenth of a large image's statistics): the
/// fraction of a clamped value is exact, and a half rounds up, as `round` does away from zero.
#[inline]
fn round_to_byte(v: f32) -> u8 {
    // Branch-free, so that a row of them vectorizes. NaN stays NaN through `clamp` and then
    // becomes 0 (`as i32`; the comparison is false), as it did through `as u8`.
    let v = v.clamp(0.0, 255.0);
    let whole = v as i32;
    (whole + i32::from(v - whole as f32 >= 0.5)) as u8
}

/// Resizes the image separably and hands each output row to `emit(y, planes, row)`: `planes`
/// values per output pixel, interleaved (3: R, G, B of an RGB source for a colour model; 1: gray
/// as it is, or gray from RGB by the 601 weights for a grayscale model).
///
/// Each source row needed is first resized horizontally, then each output row is the weighted
/// sum of the horizontal rows its taps name, a whole row at a time (a loop the compiler
/// vectorizes). Only the horizontal rows one output row reads are kept (a ring as tall as the
/// widest vertical filter), so the scratch memory is a few rows whatever the source's height.
/// Every value is summed in the order of the plain definition (horizontal taps, then vertical
/// taps, a single tap being the value itself), which the tests check to the bit.
fn resize_rows(
    image: &DynamicImage,
    dst_w: usize,
    dst_h: usize,
    color: Color,
    resize: Resize,
    mut emit: impl FnMut(usize, usize, &[f32]),
) {
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
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
    if dst_w == 0 || dst_h == 0 || src_w == 0 || src_h == 0 {
        return;
    }
    let planes = if stride == 3 && color != Color::Grayscale {
        3
    } else {
        1
    };
    let luma = stride == 3 && planes == 1;

    let columns = Filter::cached(src_w, dst_w, resize);
    let mut across = horizontal_pass(&columns, stride, planes, luma);
    let rows = Filter::cached(src_h, dst_h, resize);
    let row_len = dst_w * planes;
    let ring = rows.widest().max(1);
    let mut horizontal = vec![0f32; ring * row_len];
    let mut acc = vec![0f32; row_len];
    // Source rows [0, ready) have been resized (or skipped); row r lies in slot r % ring.
    let mut ready = 0usize;

    for y in 0..dst_h {
        let (start, weights) = rows.taps(y);
        let end = start + weights.len();
        // Tap windows start at non-decreasing rows and are at most `ring` tall, so a row older
        // than `start` is never read again and its slot may be overwritten.
        ready = ready.max(start);
        while ready < end {
            let slot = (ready % ring) * row_len;
            let src_row = &pixels[ready * src_w * stride..(ready + 1) * src_w * stride];
            across(src_row, &mut horizontal[slot..slot + row_len]);
            ready += 1;
        }
        if weights.len() == 1 {
            let slot = (start % ring) * row_len;
            emit(y, planes, &horizontal[slot..slot + row_len]);
            continue;
        }
        // The first tap's products are the sum so far: 0 + w·h is w·h exactly (w, h ≥ 0).
        let first = (start % ring) * row_len;
        for (a, &h) in acc.iter_mut().zip(&horizontal[first..first + row_len]) {
            *a = weights[0] * h;
        }
        for (k, &wt) in weights.iter().enumerate().skip(1) {
            let slot = ((start + k) % ring) * row_len;
            for (a, &h) in acc.iter_mut().zip(&horizontal[slot..slot + row_len]) {
                *a += wt * h;
            }
        }
        emit(y, planes, &acc);
    }
}

/// One source row's horizontal pass into a row of the ring.
type RowPass<'a> = Box<dyn FnMut(&[u8], &mut [f32]) + 'a>;

/// The horizontal pass of one source row into `planes` values per output pixel. When no output
/// pixel reads more than 4 source pixels, every pixel's taps are padded to the same count with
/// zero weights (reading a pixel in range), so the inner loop has a fixed length the compiler
/// unrolls (measured: the digits model's 32×32 → 28×28 tensor from 3.6 to 2.7 µs; no change
/// for 320×240 → 224×224). A zero-weight tap adds +0 to a sum that is never −0, so every value
/// stays the same to the bit.
fn horizontal_pass<'a>(
    columns: &'a Filter,
    stride: usize,
    planes: usize,
    luma: bool,
) -> RowPass<'a> {
    match columns.widest() {
        1 => fixed_taps::<1>(columns, stride, planes, luma),
        2 => fixed_taps::<2>(columns, stride, planes, luma),
        3 => fixed_taps::<3>(columns, stride, planes, luma),
        4 => fixed_taps::<4>(columns, stride, planes, luma),
        // A large downscale of an RGB source (a photo into a model or into the statistics'
        // copy): the same four-lane taps as `fixed_taps`, however many pixels an output reads.
        _ if planes == 3 => {
            let mut wide: Vec<f32> = Vec::new();
            Box::new(move |row: &[u8], into: &mut [f32]| {
                widen(row, &mut wide);
                rgb_taps(columns, &wide, into);
            })
        }
        _ => Box::new(move |row: &[u8], into: &mut [f32]| {
            horizontal_row(row, stride, luma, columns, into);
        }),
    }
}

/// The horizontal pass of one RGB row widened to f32 ([`widen`]) into `into` (R, G, B an
/// output pixel): each output's taps summed in their order from 0, four lanes at a time (R, G,
/// B and the next pixel's R, thrown away), and four outputs at once so that their sums do not
/// wait on each other (the adds' latency, not their count, was the cost). Each lane is the
/// scalar sum of the plain definition, to the bit.
fn rgb_taps(columns: &Filter, wide: &[f32], into: &mut [f32]) {
    // The farthest tap reads up to (reach − 1) · 3 + 4.
    assert!(columns.reach() * 3 < wide.len(), "taps past the row");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: every tap of every output lies before `reach`, checked above.
    unsafe {
        rgb_taps_sse(columns, wide, into);
    }
    #[cfg(not(target_arch = "x86_64"))]
    rgb_taps_portable(columns, wide, into);
}

/// [`rgb_taps`] without SSE: the other architectures' way, and the tests' reference for the
/// SSE one.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn rgb_taps_portable(columns: &Filter, wide: &[f32], into: &mut [f32]) {
    for (o, out) in into.chunks_exact_mut(3).enumerate() {
        let (start, weights) = columns.taps(o);
        let mut acc = [0f32; 4];
        for (j, &w) in weights.iter().enumerate() {
            for (a, &p) in acc.iter_mut().zip(&wide[(start + j) * 3..]) {
                *a += w * p;
            }
        }
        out.copy_from_slice(&acc[..3]);
    }
}

/// The SSE steps both RGB tap kernels share: four lanes, R, G, B and the next pixel's R.
#[cfg(target_arch = "x86_64")]
mod sse {
    use std::arch::x86_64::{
        __m128, _mm_add_ps, _mm_loadu_ps, _mm_mul_ps, _mm_set1_ps, _mm_setzero_ps, _mm_storeu_ps,
    };

    /// A sum of nothing yet.
    #[inline(always)]
    pub(super) fn zero() -> __m128 {
        // SAFETY: SSE is part of x86-64's baseline.
        unsafe { _mm_setzero_ps() }
    }

    /// `acc + w · pixels[at..at + 4]`, lane by lane.
    ///
    /// # Safety
    /// `pixels[at..at + 4]` is readable.
    #[inline(always)]
    pub(super) unsafe fn tap(acc: __m128, pixels: *const f32, at: usize, w: f32) -> __m128 {
        // SAFETY: the caller's promise; SSE is part of x86-64's baseline.
        unsafe {
            _mm_add_ps(
                acc,
                _mm_mul_ps(_mm_set1_ps(w), _mm_loadu_ps(pixels.add(at))),
            )
        }
    }

    /// The first three lanes (R, G, B) into `out`.
    #[inline(always)]
    pub(super) fn emit(acc: __m128, out: &mut [f32]) {
        let mut lanes = [0f32; 4];
        // SAFETY: writes the four floats of `lanes`.
        unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), acc) };
        out.copy_from_slice(&lanes[..3]);
    }
}

/// [`rgb_taps`] with SSE (part of x86-64's baseline): one multiply and one add a tap for all
/// four lanes, where the compiler kept the third lane apart.
///
/// # Safety
/// Every output's taps end before `wide.len() / 3` pixels: (start + len) · 3 < `wide.len()`.
#[cfg(target_arch = "x86_64")]
unsafe fn rgb_taps_sse(columns: &Filter, wide: &[f32], into: &mut [f32]) {
    use sse::{emit, zero};
    let pixels = wide.as_ptr();
    // SAFETY: reads wide[(start + j) · 3..+ 4] for a tap j of an output, in bounds by the
    // caller's promise; every caller's `j` is below the weights' length.
    let tap = |acc, start: usize, weights: &[f32], j: usize| unsafe {
        sse::tap(acc, pixels, (start + j) * 3, *weights.get_unchecked(j))
    };
    let n = into.len() / 3;
    let mut o = 0;
    while o + 4 <= n {
        let t = [
            columns.taps(o),
            columns.taps(o + 1),
            columns.taps(o + 2),
            columns.taps(o + 3),
        ];
        let common = t.iter().map(|(_, w)| w.len()).min().unwrap_or(0);
        let mut acc = [zero(); 4];
        for j in 0..common {
            for k in 0..4 {
                acc[k] = tap(acc[k], t[k].0, t[k].1, j);
            }
        }
        for k in 0..4 {
            let (start, weights) = t[k];
            for j in common..weights.len() {
                acc[k] = tap(acc[k], start, weights, j);
            }
            emit(acc[k], &mut into[(o + k) * 3..(o + k + 1) * 3]);
        }
        o += 4;
    }
    for o in o..n {
        let (start, weights) = columns.taps(o);
        let mut acc = zero();
        for j in 0..weights.len() {
            acc = tap(acc, start, weights, j);
        }
        emit(acc, &mut into[o * 3..(o + 1) * 3]);
    }
}

/// [`rgb_taps`] for outputs of `K` taps each (padded with zero weights), at the offsets given.
///
/// # Safety
/// Every offset + 4 ≤ `wide.len()`.
unsafe fn rgb_fixed_taps<const K: usize>(
    wide: &[f32],
    offsets: &[[usize; K]],
    weights: &[[f32; K]],
    into: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use sse::{emit, zero};
        let pixels = wide.as_ptr();
        // SAFETY: reads wide[at..at + 4], in bounds by the caller's promise.
        let tap = |acc, at: usize, w: f32| unsafe { sse::tap(acc, pixels, at, w) };
        let mut outs = into.chunks_exact_mut(12);
        let mut o = 0;
        for four in &mut outs {
            let mut acc = [zero(); 4];
            for j in 0..K {
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = tap(*a, offsets[o + k][j], weights[o + k][j]);
                }
            }
            for (a, out) in acc.into_iter().zip(four.chunks_exact_mut(3)) {
                emit(a, out);
            }
            o += 4;
        }
        for out in outs.into_remainder().chunks_exact_mut(3) {
            let mut acc = zero();
            for j in 0..K {
                acc = tap(acc, offsets[o][j], weights[o][j]);
            }
            emit(acc, out);
            o += 1;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    rgb_fixed_taps_portable(wide, offsets, weights, into);
}

/// [`rgb_fixed_taps`] without SSE: the other architectures' way, and the tests' reference for
/// the SSE one.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn rgb_fixed_taps_portable<const K: usize>(
    wide: &[f32],
    offsets: &[[usize; K]],
    weights: &[[f32; K]],
    into: &mut [f32],
) {
    for ((out, off), wt) in into.chunks_exact_mut(3).zip(offsets).zip(weights) {
        let mut acc = [0f32; 4];
        for j in 0..K {
            for (a, &p) in acc.iter_mut().zip(&wide[off[j]..off[j] + 4]) {
                *a += wt[j] * p;
            }
        }
        out.copy_from_slice(&acc[..3]);
    }
}

/// The row's bytes as f32, and one 0 after them: the fourth lane of the last pixel's taps.
fn widen(row: &[u8], wide: &mut Vec<f32>) {
    wide.clear();
    wide.extend(row.iter().map(|&v| f32::from(v)));
    wide.push(0.0);
}

/// Every output position's taps padded to `K` (at most `columns.widest()`): the byte offset
/// of each tap's pixel in a row of `stride` bytes a pixel, and its weight; a padding tap
/// reads the first pixel with weight 0.
fn padded_taps<const K: usize>(
    columns: &Filter,
    stride: usize,
) -> (Vec<[usize; K]>, Vec<[f32; K]>) {
    (0..columns.starts.len())
        .map(|o| {
            let (start, w) = columns.taps(o);
            let (mut off, mut wt) = ([start * stride; K], [0f32; K]);
            for (j, &v) in w.iter().enumerate() {
                off[j] = (start + j) * stride;
                wt[j] = v;
            }
            (off, wt)
        })
        .unzip()
}

fn fixed_taps<'a, const K: usize>(
    columns: &'a Filter,
    stride: usize,
    planes: usize,
    luma: bool,
) -> RowPass<'a> {
    let (offsets, weights) = padded_taps::<K>(columns, stride);
    match (planes, luma) {
        // RGB: the row is widened to f32 once (one more value at the end), and each tap adds
        // four lanes at a time, R, G, B and the next pixel's R, whose sum is thrown away: one
        // vector multiply and add a tap instead of three of each, four outputs at once
        // (`rgb_fixed_taps`). Each lane is the same scalar sum as before, so nothing changes
        // but the speed.
        (3, _) => {
            let mut wide: Vec<f32> = Vec::new();
            let farthest = offsets.iter().flatten().copied().max().unwrap_or(0);
            Box::new(move |row: &[u8], into: &mut [f32]| {
                widen(row, &mut wide);
                assert!(farthest + 4 <= wide.len(), "taps past the row");
                // SAFETY: no tap lies past `farthest`, checked above for this row.
                unsafe { rgb_fixed_taps(&wide, &offsets, &weights, into) };
            })
        }
        (_, true) => Box::new(move |row: &[u8], into: &mut [f32]| {
            for ((out, off), wt) in into.iter_mut().zip(&offsets).zip(&weights) {
                let mut acc = 0f32;
                for j in 0..K {
                    let p = &row[off[j]..off[j] + 3];
                    acc += wt[j] * f32::from(luma_601(p[0], p[1], p[2]));
                }
                *out = acc;
            }
        }),
        _ => Box::new(move |row: &[u8], into: &mut [f32]| {
            for ((out, off), wt) in into.iter_mut().zip(&offsets).zip(&weights) {
                let mut acc = 0f32;
                for j in 0..K {
                    acc += wt[j] * f32::from(row[off[j]]);
                }
                *out = acc;
            }
        }),
    }
}

/// One source row resized horizontally into `into`, one value per output pixel (an RGB
/// source for a colour model goes through `rgb_taps`). `luma`: gray from RGB pixels by the 601
/// weights, tap by tap.
fn horizontal_row(row: &[u8], stride: usize, luma: bool, columns: &Filter, into: &mut [f32]) {
    // Plain index loops: this pass reads every source pixel, and is the cost of a large image
    // (also in a debug build, where each iterator step is a call).
    if luma {
        for (x, out) in into.iter_mut().enumerate() {
            let (start, weights) = columns.taps(x);
            let mut acc = 0f32;
            let mut i = start * 3;
            for &wt in weights {
                acc += wt * f32::from(luma_601(row[i], row[i + 1], row[i + 2]));
                i += 3;
            }
            *out = acc;
        }
    } else {
        // One value per source pixel: gray, or one byte of each RGB pixel is never asked for
        // here (a colour model reads all three in `rgb_taps`).
        for (x, out) in into.iter_mut().enumerate() {
            let (start, weights) = columns.taps(x);
            let mut acc = 0f32;
            let mut i = start * stride;
            for &wt in weights {
                acc += wt * f32::from(row[i]);
                i += stride;
            }
            *out = acc;
        }
    }
}

/// A resize filter along one axis: for each output position, the first source pixel it reads
/// and the weights of the pixels from there on (summing to 1), all in one flat array.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    starts: Vec<usize>,
    /// Output position `o`'s weights are `weights[ends[o - 1]..ends[o]]` (from 0 for the first).
    ends: Vec<usize>,
    weights: Vec<f32>,
    /// The most source pixels one output position reads (kept: every resize asks).
    widest: usize,
    /// One past the last source pixel any output position reads.
    reach: usize,
}

impl Filter {
    fn new(src: usize, dst: usize, filter: Resize) -> Filter {
        let mut f = Filter::taps_of(src, dst, filter);
        for o in 0..f.starts.len() {
            let (start, len) = (f.starts[o], f.taps(o).1.len());
            f.widest = f.widest.max(len);
            f.reach = f.reach.max(start + len);
        }
        f
    }

    /// The taps of every output position (`widest` and `reach` left at 0).
    fn taps_of(src: usize, dst: usize, filter: Resize) -> Filter {
        let mut f = Filter {
            starts: Vec::with_capacity(dst),
            ends: Vec::with_capacity(dst),
            weights: Vec::with_capacity(dst * 3),
            widest: 0,
            reach: 0,
        };
        let one = |f: &mut Filter, start: usize, weights: &mut dyn Iterator<Item = f32>| {
            f.starts.push(start);
            f.weights.extend(weights);
            f.ends.push(f.weights.len());
        };
        if src == dst {
            for i in 0..dst {
                one(&mut f, i, &mut std::iter::once(1.0));
            }
            return f;
        }
        let ratio = src as f64 / dst as f64;
        for o in 0..dst {
            match filter {
                Resize::Nearest => {
                    let i = (((o as f64 + 0.5) * ratio).floor() as usize).min(src - 1);
                    one(&mut f, i, &mut std::iter::once(1.0));
                }
                Resize::Bilinear => {
                    let pos = ((o as f64 + 0.5) * ratio - 0.5).clamp(0.0, (src - 1) as f64);
                    let i0 = pos.floor() as usize;
                    let frac = pos - i0 as f64;
                    if i0 + 1 >= src || frac == 0.0 {
                        one(&mut f, i0, &mut std::iter::once(1.0));
                    } else {
                        one(
                            &mut f,
                            i0,
                            &mut [(1.0 - frac) as f32, frac as f32].into_iter(),
                        );
                    }
                }
                Resize::Area => {
                    let lo = o as f64 * ratio;
                    let hi = ((o + 1) as f64 * ratio).min(src as f64);
                    let first = lo.floor() as usize;
                    let last = (hi.ceil() as usize).clamp(first + 1, src);
                    one(
                        &mut f,
                        first,
                        &mut (first..last).map(|i| {
                            let overlap = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                            (overlap / (hi - lo)) as f32
                        }),
                    );
                }
            }
        }
        f
    }

    /// [`Filter::new`], remembered by the thread for the last 16 sizes it computed (first in,
    /// first out): a service sees the same few image sizes again and again (every request
    /// resizes four times; computing the weights took 1.5% of the sidecar's CPU with the
    /// digits model).
    fn cached(src: usize, dst: usize, filter: Resize) -> Rc<Filter> {
        const KEPT: usize = 16;
        type Key = (usize, usize, Resize);
        thread_local! {
            static FILTERS: RefCell<VecDeque<(Key, Rc<Filter>)>> =
                const { RefCell::new(VecDeque::new()) };
        }
        let key = (src, dst, filter);
        FILTERS.with(|filters| {
            let mut filters = filters.borrow_mut();
            if let Some((_, f)) = filters.iter().find(|(k, _)| *k == key) {
                return Rc::clone(f);
            }
            let f = Rc::new(Filter::new(src, dst, filter));
            if filters.len() == KEPT {
                filters.pop_back();
            }
            filters.push_front((key, Rc::clone(&f)));
            f
        })
    }

    /// Output position `o`'s first source pixel and weights.
    #[inline]
    fn taps(&self, o: usize) -> (usize, &[f32]) {
        let from = if o == 0 { 0 } else { self.ends[o - 1] };
        (self.starts[o], &self.weights[from..self.ends[o]])
    }

    /// The most source pixels one output position reads.
    fn widest(&self) -> usize {
        self.widest
    }

    /// One past the last source pixel any output position reads.
    fn reach(&self) -> usize {
        self.reach
    }
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
        let f = Filter::new(3, 2, Resize::Area);
        let (start, weights) = f.taps(0);
        assert_eq!((start, weights.len()), (0, 2));
        assert!((weights[0] - 2.0 / 3.0).abs() < 1e-6);
        assert!((weights[1] - 1.0 / 3.0).abs() < 1e-6);
        let f = Filter::new(37, 5, Resize::Area);
        for o in 0..5 {
            let sum: f32 = f.taps(o).1.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
        }
        assert_eq!(f.widest(), 9);
        // The last output reads up to the last pixel; bilinear's first reads from pixel 0.
        assert_eq!(f.reach(), 37);
        assert_eq!(Filter::new(4, 2, Resize::Bilinear).reach(), 4);
    }

    /// The SSE taps against the portable ones (what other architectures run), bit for bit,
    /// over many widths and filters, both the fixed-count and the any-count forms.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse_rgb_taps_equal_the_portable_ones_to_the_bit() {
        let mut rng = crate::stats::random::SplitMix64::new(7);
        for &(src, dst) in &[
            (1, 1),
            (5, 3),
            (37, 5),
            (320, 224),
            (1920, 224),
            (1920, 256),
        ] {
            let row: Vec<u8> = (0..src * 3).map(|_| rng.next_u64() as u8).collect();
            let mut wide = Vec::new();
            widen(&row, &mut wide);
            for resize in [Resize::Area, Resize::Bilinear, Resize::Nearest] {
                let f = Filter::new(src, dst, resize);
                let (mut sse, mut portable) = (vec![0f32; dst * 3], vec![1f32; dst * 3]);
                assert!(f.reach() * 3 < wide.len());
                // SAFETY: checked just above, as `rgb_taps` does.
                unsafe { rgb_taps_sse(&f, &wide, &mut sse) };
                rgb_taps_portable(&f, &wide, &mut portable);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&sse), bits(&portable), "{src} → {dst} {resize:?}");
                if f.widest() <= 4 {
                    let (offsets, weights) = padded_taps::<4>(&f, 3);
                    let mut fixed = vec![2f32; dst * 3];
                    // SAFETY: every offset is at most (src − 1) · 3, and `wide` holds src · 3 + 1.
                    unsafe { rgb_fixed_taps(&wide, &offsets, &weights, &mut fixed) };
                    let mut fixed_portable = vec![3f32; dst * 3];
                    rgb_fixed_taps_portable(&wide, &offsets, &weights, &mut fixed_portable);
                    assert_eq!(
                        bits(&fixed),
                        bits(&fixed_portable),
                        "{src} → {dst} {resize:?}"
                    );
                    assert_eq!(bits(&fixed), bits(&sse), "{src} → {dst} {resize:?}");
                }
            }
        }
    }

    #[test]
    fn bilinear_and_nearest_follow_their_definitions() {
        // 4 → 2: bilinear samples at 0.5 and 2.5 → mean of neighbours.
        let t = Filter::new(4, 2, Resize::Bilinear);
        assert_eq!(t.taps(0), (0, &[0.5f32, 0.5][..]));
        assert_eq!(t.taps(1), (2, &[0.5f32, 0.5][..]));
        let n = Filter::new(4, 2, Resize::Nearest);
        assert_eq!((n.taps(0).0, n.taps(1).0), (1, 3));
    }

    /// The plain definition, one output value at a time: the horizontal taps' weighted sum of
    /// each source row the vertical taps name, then the vertical taps' weighted sum of those,
    /// in tap order (a single tap is the value itself); gray from RGB by the 601 weights.
    fn plain_tensor(image: &DynamicImage, spec: &Preprocess) -> Vec<f32> {
        let rgb = image.to_rgb8();
        let gray_source = matches!(image, DynamicImage::ImageLuma8(_));
        let (w, h) = (image.width() as usize, image.height() as usize);
        let (dw, dh, ch) = (
            spec.width as usize,
            spec.height as usize,
            spec.color.channels(),
        );
        let (cols, rows) = (
            Filter::new(w, dw, spec.resize),
            Filter::new(h, dh, spec.resize),
        );
        let value = |x: usize, y: usize, c: usize| -> f32 {
            let p = rgb.get_pixel(x as u32, y as u32).0;
            match (spec.color, gray_source) {
                (_, true) => f32::from(p[0]),
                (Color::Grayscale, false) => f32::from(luma_601(p[0], p[1], p[2])),
                (Color::Bgr, false) => f32::from(p[2 - c]),
                (Color::Rgb, false) => f32::from(p[c]),
            }
        };
        let mut out = vec![0f32; spec.tensor_len()];
        for c in 0..ch {
            for oy in 0..dh {
                for ox in 0..dw {
                    let (cx, wx) = cols.taps(ox);
                    let across = |y: usize| {
                        let mut acc = 0f32;
                        for (k, &wt) in wx.iter().enumerate() {
                            acc += wt * value(cx + k, y, c);
                        }
                        acc
                    };
                    let (cy, wy) = rows.taps(oy);
                    let pixel = if wy.len() == 1 {
                        across(cy)
                    } else {
                        let mut acc = 0f32;
                        for (k, &wt) in wy.iter().enumerate() {
                            acc += wt * across(cy + k);
                        }
                        acc
                    };
                    let v = (pixel * spec.scale - spec.mean[c]) / spec.std[c];
                    let at = match spec.layout {
                        Layout::Nchw => (c * dh + oy) * dw + ox,
                        Layout::Nhwc => (oy * dw + ox) * ch + c,
                    };
                    out[at] = v;
                }
            }
        }
        out
    }

    #[test]
    fn bytes_are_the_rounded_tensor() {
        let rgb = RgbImage::from_fn(37, 23, |x, y| {
            Rgb([(x * 7) as u8, (y * 11) as u8, (x * y) as u8])
        });
        let sources = [
            DynamicImage::ImageRgb8(rgb.clone()),
            DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(rgb.clone()).to_luma8()),
            DynamicImage::ImageLumaA8(DynamicImage::ImageRgb8(rgb.clone()).to_luma_alpha8()),
            DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb).to_rgba8()),
        ];
        for image in &sources {
            for color in [Color::Rgb, Color::Bgr, Color::Grayscale] {
                for resize in [Resize::Area, Resize::Bilinear] {
                    let s = spec(16, 9, color, Layout::Nhwc, resize);
                    let mut values = vec![0f32; s.tensor_len()];
                    to_tensor(image, &s, &mut values);
                    let want: Vec<u8> = values
                        .iter()
                        .map(|v| v.round().clamp(0.0, 255.0) as u8)
                        .collect();
                    assert_eq!(resize_to_bytes(image, 16, 9, color, resize), want);
                }
            }
        }
        for v in [
            -3.0f32, 0.0, 0.49999997, 0.5, 1.5, 2.5, 254.5, 254.49998, 255.0, 300.0,
        ] {
            assert_eq!(round_to_byte(v), v.round().clamp(0.0, 255.0) as u8, "{v}");
        }
    }

    #[test]
    fn tensor_equals_the_plain_definition_to_the_bit() {
        let mut rng = crate::stats::random::SplitMix64::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next_u64();
        let sizes = [(1, 1), (3, 2), (32, 32), (320, 240), (57, 91), (5, 300)];
        let targets = [(1, 1), (8, 8), (28, 28), (224, 224), (9, 8), (40, 13)];
        for &(w, h) in &sizes {
            let bytes: Vec<u8> = (0..w * h * 3).map(|_| next() as u8).collect();
            let rgb = RgbImage::from_raw(w, h, bytes).unwrap();
            let images = [
                DynamicImage::ImageRgb8(rgb.clone()),
                DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(rgb).to_luma8()),
            ];
            for image in &images {
                for &(tw, th) in &targets {
                    for color in [Color::Rgb, Color::Bgr, Color::Grayscale] {
                        for layout in [Layout::Nchw, Layout::Nhwc] {
                            for resize in [Resize::Area, Resize::Bilinear, Resize::Nearest] {
                                let mut s = spec(tw, th, color, layout, resize);
                                let c = color.channels();
                                s.scale = 1.0 / 255.0;
                                s.mean = (0..c).map(|i| 0.4 + 0.03 * i as f32).collect();
                                s.std = (0..c).map(|i| 0.2 + 0.01 * i as f32).collect();
                                let mut got = vec![f32::NAN; s.tensor_len()];
                                to_tensor(image, &s, &mut got);
                                let want = plain_tensor(image, &s);
                                let same = got
                                    .iter()
                                    .zip(&want)
                                    .all(|(a, b)| a.to_bits() == b.to_bits());
                                assert!(
                                    same,
                                    "{w}x{h} → {tw}x{th} {color:?} {layout:?} {resize:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
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
