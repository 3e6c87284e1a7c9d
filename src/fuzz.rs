//! Entry points for the fuzz targets (`fuzz/`, run with `make fuzz`) and for their regression
//! runner (`tests/fuzz.rs`, part of `make test`). Each takes arbitrary bytes and drives one
//! surface that hostile input reaches, the way the request path does; it must return, never
//! panic, whatever the bytes. A crash input found by a fuzzer is committed under
//! `fuzz/regressions/<target>/` and replayed by `make test`.

use std::borrow::Cow;
use std::path::Path;

use arrow_schema::SchemaRef;

use image::ImageFormat;

use crate::api::v2::{self, Encoding, ModelPorts};
use crate::image_stats;
use crate::log::schema::{feedback_schema, prediction_schema};
use crate::log::segment::{self, decode_segment_with};
use crate::preprocess::{self, Color, DecodeLimits, Layout, Preprocess, Resize};

/// A target's entry point.
pub type Target = fn(&[u8]);

/// The targets, by name (the fuzz crate's binaries and the regression folders use these).
pub const TARGETS: &[(&str, Target)] = &[
    ("image", image),
    ("v2_request", v2_request),
    ("config", config),
    ("wal_segment", wal_segment),
];

/// Limits small enough that a fuzzer's many iterations stay fast, the same checks as served.
pub const LIMITS: DecodeLimits = DecodeLimits {
    max_width: 4096,
    max_height: 4096,
    max_pixels: 4_000_000,
    max_alloc_bytes: 64 * 1024 * 1024,
    decode_budget_bytes: 256 * 1024 * 1024,
    decode_wait: std::time::Duration::ZERO,
};

/// Decode, preprocess into a tensor, input statistics and dHash: what `classify` does with a
/// body before inference. The first byte picks the declared format and the model's
/// preprocessing (color, layout, resize, size); the rest is the image.
pub fn image(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let declared = match selector & 0x07 {
        0 => None,
        1 => Some(ImageFormat::Png),
        2 => Some(ImageFormat::Jpeg),
        3 => Some(ImageFormat::WebP),
        4 => Some(ImageFormat::Gif),
        5 => Some(ImageFormat::Bmp),
        6 => Some(ImageFormat::Tiff),
        _ => Some(ImageFormat::Png),
    };
    let color = match (selector >> 3) & 0x03 {
        0 => Color::Grayscale,
        1 => Color::Rgb,
        _ => Color::Bgr,
    };
    let resize = match (selector >> 5) & 0x03 {
        0 => Resize::Area,
        1 => Resize::Bilinear,
        _ => Resize::Nearest,
    };
    let (width, height) = if selector & 0x80 == 0 {
        (8, 8)
    } else {
        (7, 13)
    };
    let channels = color.channels();
    let spec = Preprocess {
        width,
        height,
        color,
        layout: if selector & 0x40 == 0 {
            Layout::Nchw
        } else {
            Layout::Nhwc
        },
        resize,
        scale: 1.0 / 255.0,
        mean: vec![0.5; channels],
        std: vec![0.25; channels],
    };
    let Ok(decoded) = preprocess::decode(bytes, declared, &LIMITS) else {
        return;
    };
    let mut tensor = vec![0.0f32; spec.tensor_len()];
    preprocess::to_tensor(&decoded.image, &spec, &mut tensor);
    let described = image_stats::describe(&decoded.image);
    let (stats, hash) = (described.stats, described.dhash);
    // The tensor, the statistics and the descriptor feed the model, the monitor and the
    // out-of-distribution score: none may be NaN.
    for v in tensor
        .iter()
        .chain(stats.values().iter())
        .chain(described.descriptor.iter())
    {
        assert!(!v.is_nan(), "NaN from a decoded image");
    }
    let _ = image_stats::hamming(hash, hash);
}

/// A KServe v2 infer request as it arrives: the first two bytes say how long the JSON part is
/// (the `Inference-Header-Content-Length` header), the rest is binary tensor data; a third
/// selector byte optionally wraps the whole body in gzip or deflate first.
pub fn v2_request(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let body: Vec<u8> = match selector & 0x03 {
        1 | 2 => {
            let encoding = if selector & 0x03 == 1 {
                Encoding::Gzip
            } else {
                Encoding::Deflate
            };
            match v2::decompress(rest, encoding, 1 << 20) {
                Ok(b) => b,
                Err(_) => return,
            }
        }
        _ => rest.to_vec(),
    };
    let (json, binary) = if body.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([body[0], body[1]]));
        let payload = &body[2..];
        if n == 0 || n > payload.len() {
            (payload, &[][..])
        } else {
            payload.split_at(n)
        }
    } else {
        (&body[..], &[][..])
    };
    let shape = if selector & 0x04 == 0 {
        [1, 8, 8]
    } else {
        [8, 8, 3]
    };
    let ports = ModelPorts {
        input: "image",
        image_shape: shape,
        probabilities: "probabilities",
        embedding: (selector & 0x08 == 0).then_some("embedding"),
    };
    let whole = v2::parse_request(json, binary, &ports);
    if let Ok(request) = &whole
        && let v2::Input::Tensor { n, values } = &request.input
    {
        // An accepted tensor holds whole images of the model's shape.
        let per_image: i64 = shape.iter().product();
        assert_eq!(*n as i64 * per_image, values.len() as i64);
    }
    // The binary part arriving in pieces (as HTTP frames do) parses to the same request.
    if !binary.is_empty() {
        let mut cuts: Vec<usize> = rest
            .iter()
            .take(4)
            .map(|b| usize::from(*b) % (binary.len() + 1))
            .collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([binary.len()]) {
            pieces.push(&binary[from..cut]);
            from = cut;
        }
        let split = v2::parse_request_binary(json, v2::Binary::from_pieces(&pieces), &ports);
        match (&whole, &split) {
            (Ok(a), Ok(b)) => assert!(same_request(a, b), "{a:?} / {b:?}"),
            (Err(a), Err(b)) => assert_eq!(a.code, b.code),
            _ => panic!("one piece and several disagree: {whole:?} / {split:?}"),
        }
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = Encoding::accepted(text);
        let _ = v2::base64_decode(text);
    }
}

/// Two parsed requests alike, tensor values compared by their bits (NaN is refused, but a
/// derived comparison would still call -0.0 and 0.0 equal).
fn same_request(a: &v2::Request, b: &v2::Request) -> bool {
    let bits = |i: &v2::Input| match i {
        v2::Input::Tensor { n, values } => (
            Some((*n, values.iter().map(|v| v.to_bits()).collect::<Vec<_>>())),
            None,
        ),
        v2::Input::Images(images) => (None, Some(images.clone())),
    };
    a.id == b.id && a.outputs == b.outputs && bits(&a.input) == bits(&b.input)
}

/// The config loader: TOML text, then environment overrides. The input is the file's text,
/// optionally followed by a NUL and `KEY=value` lines taken as the environment.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (file, env) = text.split_once('\0').unwrap_or((&text, ""));
    let vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Err(e) = crate::config::load_str(file, Path::new("fuzz.toml"), vars) {
        // Every refusal has something to say.
        assert!(!e.to_string().is_empty());
    }
}

/// Between two payloads of a re-framed `wal_segment` input.
pub const WAL_SEPARATOR: &[u8] = b"\nSWFS\n";

/// Write-ahead segment recovery, as a restart reads a segment left on disk. The first byte picks
/// the stream (predictions or feedback) and how the rest is taken: as the segment's bytes, or
/// (bit 1) as payloads separated by [`WAL_SEPARATOR`], each wrapped in a frame with a valid
/// header and checksum, so that mutated payloads get past the checksum to the message checks
/// and the Arrow IPC decoder behind them.
pub fn wal_segment(data: &[u8]) {
    let Some((schema, bytes)) = wal_input(data) else {
        return;
    };
    // The prediction stream's segments may hold row frames.
    let rows: Option<segment::RowDecoder<'_>> = (data[0] & 1 == 0)
        .then_some(&crate::log::rows::predictions_batch as segment::RowDecoder<'_>);
    let decoded = decode_segment_with(&bytes, &schema, rows);
    // What recovery writes to Parquet is in the current schema, whatever the segment held.
    for batch in &decoded.batches {
        assert_eq!(batch.schema().fields(), schema.fields());
    }
    if let Some(stop) = &decoded.stop {
        assert!(stop.offset <= bytes.len() as u64, "{stop:?}");
    }
}

/// What a `wal_segment` input stands for: the stream's schema and the segment's bytes (as
/// given, or the payloads framed). `None` for an empty input or a payload too large to frame.
pub fn wal_input(data: &[u8]) -> Option<(SchemaRef, Cow<'_, [u8]>)> {
    let (&selector, rest) = data.split_first()?;
    let schema = if selector & 0x01 == 0 {
        prediction_schema()
    } else {
        feedback_schema()
    };
    if selector & 0x02 == 0 {
        return Some((schema, Cow::Borrowed(rest)));
    }
    let mut out = Vec::with_capacity(rest.len() + 64);
    for payload in split(rest, WAL_SEPARATOR) {
        segment::push_frame(payload, &mut out).ok()?;
    }
    Some((schema, Cow::Owned(out)))
}

/// `data` cut at every `separator`.
fn split<'a>(data: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + separator.len() <= data.len() {
        if &data[i..i + separator.len()] == separator {
            parts.push(&data[start..i]);
            i += separator.len();
            start = i;
        } else {
            i += 1;
        }
    }
    parts.push(&data[start..]);
    parts
}
