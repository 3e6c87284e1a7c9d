//! The KServe Open Inference Protocol v2 as plain data: parsing an infer request (JSON tensors
//! and the binary-data extension; FP32, FP16 and UINT8 tensors cast to FP32; BYTES elements that
//! carry encoded images), the classification extension, encoding the answer, and the body
//! compression `tritonclient` uses. Pure: no IO, so it is tested and fuzzed without a server.

use std::io::{Read, Write};

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Most images one infer request may carry.
pub const MAX_BATCH: usize = 1024;

/// What the model expects, as the parser needs it.
#[derive(Debug, Clone)]
pub struct ModelPorts<'a> {
    pub input: &'a str,
    /// `[C, H, W]` or `[H, W, C]`.
    pub image_shape: [i64; 3],
    pub probabilities: &'a str,
    pub embedding: Option<&'a str>,
}

/// A request error: 400 (`bad_*`) or 422 (`wrong_*`), with its code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Error {
    pub unprocessable: bool,
    pub code: &'static str,
    pub message: String,
}

fn bad(code: &'static str, message: impl Into<String>) -> V2Error {
    V2Error {
        unprocessable: false,
        code,
        message: message.into(),
    }
}

fn wrong(code: &'static str, message: impl Into<String>) -> V2Error {
    V2Error {
        unprocessable: true,
        code,
        message: message.into(),
    }
}

/// An input with neither (or both) of its two data forms.
fn data_or_binary() -> V2Error {
    bad(
        "bad_tensor",
        "give the input either `data` or parameters.binary_data_size with a binary part",
    )
}

/// The input of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `n` preprocessed images, row-major, cast to FP32.
    Tensor { n: usize, values: Vec<f32> },
    /// Encoded images (a BYTES tensor), decoded like classify.
    Images(Vec<Vec<u8>>),
}

impl Input {
    pub fn len(&self) -> usize {
        match self {
            Input::Tensor { n, .. } => *n,
            Input::Images(images) => images.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One requested output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub binary: bool,
    /// The classification extension: the top `k` classes as BYTES `"value:index:label"`.
    pub classification: Option<usize>,
}

/// A parsed infer request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<String>,
    pub input: Input,
    pub outputs: Vec<Output>,
}

#[derive(Debug, Deserialize)]
struct RawRequest {
    id: Option<String>,
    inputs: Vec<RawInput>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct RawInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn param<'a>(parameters: &'a Option<Map<String, Value>>, key: &str) -> Option<&'a Value> {
    parameters.as_ref().and_then(|p| p.get(key))
}

/// The element types an input may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    Fp32,
    Fp16,
    Uint8,
    Bytes,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        match s {
            "FP32" => Some(Dtype::Fp32),
            "FP16" => Some(Dtype::Fp16),
            "UINT8" => Some(Dtype::Uint8),
            "BYTES" => Some(Dtype::Bytes),
            _ => None,
        }
    }

    fn width(self) -> usize {
        match self {
            Dtype::Fp32 => 4,
            Dtype::Fp16 => 2,
            Dtype::Uint8 => 1,
            Dtype::Bytes => 0,
        }
    }
}

/// IEEE 754 half precision to single.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The binary part of a request (what follows the JSON part), kept in 4-byte words: FP32 data
/// then becomes the tensor as it is, with no second copy. A heavy model's 224×224 RGB image is
/// 602 KB; each pass over it on the request thread cost 1.5–2.5% of the sidecar's CPU (README,
/// performance).
#[derive(Debug, Clone, PartialEq)]
pub struct Binary {
    /// The bytes in memory order, the last word padded with zeros.
    words: Vec<f32>,
    /// How many bytes there are.
    len: usize,
    /// Bytes of an unfinished word (`len % 4` of them), not yet in `words`.
    tail: [u8; 4],
    /// Whether every whole word, read as a float in this machine's byte order, is finite.
    finite: bool,
}

impl Default for Binary {
    fn default() -> Self {
        Binary {
            words: Vec::new(),
            len: 0,
            tail: [0; 4],
            finite: true,
        }
    }
}

impl Binary {
    /// Room for `len` bytes.
    pub fn with_capacity(len: usize) -> Self {
        Binary {
            words: Vec::with_capacity(len.div_ceil(4)),
            ..Binary::default()
        }
    }

    pub fn from_slice(bytes: &[u8]) -> Self {
        Binary::from_pieces(&[bytes])
    }

    /// The pieces one after another (a body's frames), each copied once.
    pub fn from_pieces(pieces: &[impl AsRef<[u8]>]) -> Self {
        let mut b = Binary::with_capacity(pieces.iter().map(|p| p.as_ref().len()).sum());
        for piece in pieces {
            b.push(piece.as_ref());
        }
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends bytes, copying them once.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.words.len() * 4 > self.len {
            // Settled by `as_bytes`: the padded last word goes back to being a tail.
            self.words.pop();
        }
        let pending = self.len % 4;
        if pending > 0 {
            let take = (4 - pending).min(bytes.len());
            self.tail[pending..pending + take].copy_from_slice(&bytes[..take]);
            self.len += take;
            bytes = &bytes[take..];
            if !self.len.is_multiple_of(4) {
                return;
            }
            let word = f32::from_ne_bytes(self.tail);
            self.finite &= word.is_finite();
            self.words.push(word);
        }
        let whole = bytes.len() / 4 * 4;
        let at = self.words.len();
        self.words.extend(
            bytes[..whole]
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
        );
        // Checked while the frame's words are still in the cache.
        self.finite &= self.words[at..]
            .iter()
            .fold(true, |ok, v| ok & v.is_finite());
        self.len += whole;
        let rest = &bytes[whole..];
        self.tail = [0; 4];
        self.tail[..rest.len()].copy_from_slice(rest);
        self.len += rest.len();
    }

    /// Pads an unfinished last word with zeros (kept out of [`Self::as_bytes`]).
    fn settle(&mut self) {
        if !self.len.is_multiple_of(4) && self.words.len() < self.len.div_ceil(4) {
            let mut word = [0u8; 4];
            word[..self.len % 4].copy_from_slice(&self.tail[..self.len % 4]);
            self.words.push(f32::from_ne_bytes(word));
        }
    }

    /// The bytes.
    pub fn as_bytes(&mut self) -> &[u8] {
        self.settle();
        &bytemuck::cast_slice::<f32, u8>(&self.words)[..self.len]
    }

    /// The bytes as little-endian FP32 values (`len` a multiple of 4), and whether all are
    /// finite: on a little-endian machine the words as they are.
    fn into_fp32(mut self) -> (Vec<f32>, bool) {
        debug_assert_eq!(self.len % 4, 0);
        if cfg!(target_endian = "little") {
            (self.words, self.finite)
        } else {
            let values: Vec<f32> = self
                .as_bytes()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let finite = values.iter().all(|v| v.is_finite());
            (values, finite)
        }
    }
}

/// Parses an infer request: `json` is the JSON part, `binary` what follows it.
pub fn parse_request(
    json: &[u8],
    binary: &[u8],
    ports: &ModelPorts<'_>,
) -> Result<Request, V2Error> {
    parse_request_binary(json, Binary::from_slice(binary), ports)
}

/// [`parse_request`] with the binary part already in words.
pub fn parse_request_binary(
    json: &[u8],
    mut binary: Binary,
    ports: &ModelPorts<'_>,
) -> Result<Request, V2Error> {
    let raw: RawRequest = serde_json::from_slice(json).map_err(|e| {
        bad(
            "bad_json",
            format!("the inference request is not valid: {e}"),
        )
    })?;
    let id = match raw.id {
        Some(id)
            if !id.is_empty() && id.len() <= 120 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(id)
        }
        Some(id) if id.is_empty() => None,
        Some(_) => {
            return Err(bad(
                "bad_request_id",
                "id must be 1 to 120 visible ASCII characters",
            ));
        }
        None => None,
    };
    let [input] = raw.inputs.as_slice() else {
        return Err(wrong(
            "wrong_input",
            format!("expected exactly one input, `{}`", ports.input),
        ));
    };
    if input.name != ports.input {
        return Err(wrong(
            "wrong_input",
            format!(
                "unknown input `{}`; the model's input is `{}`",
                input.name, ports.input
            ),
        ));
    }
    let dtype = Dtype::parse(&input.datatype).ok_or_else(|| {
        wrong(
            "wrong_dtype",
            format!(
                "input `{}` takes FP32, FP16 or UINT8 tensors, or BYTES encoded images; not {}",
                input.name, input.datatype
            ),
        )
    })?;
    let binary_size = match param(&input.parameters, "binary_data_size") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n == binary.len())
                .ok_or_else(|| {
                    wrong(
                        "wrong_shape",
                        format!(
                            "binary_data_size must equal the {} bytes after the JSON part",
                            binary.len()
                        ),
                    )
                })?,
        ),
    };
    let input_data = match dtype {
        Dtype::Bytes => parse_images(input, binary_size.map(|_| binary.as_bytes()))?,
        _ => parse_tensor(input, dtype, binary_size.map(|_| binary), ports)?,
    };

    let default_binary = param(&raw.parameters, "binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let outputs = match &raw.outputs {
        None => std::iter::once(ports.probabilities)
            .chain(ports.embedding)
            .map(|name| Output {
                name: name.to_string(),
                binary: default_binary,
                classification: None,
            })
            .collect(),
        Some(outputs) => outputs
            .iter()
            .map(|o| {
                if o.name != ports.probabilities && ports.embedding != Some(o.name.as_str()) {
                    return Err(wrong(
                        "wrong_output",
                        format!("the model has no output `{}`", o.name),
                    ));
                }
                let classification = match param(&o.parameters, "classification") {
                    None => None,
                    Some(v) => Some(v.as_u64().filter(|k| *k >= 1 && *k <= 4096).ok_or_else(
                        || {
                            bad(
                                "bad_parameter",
                                "classification must be a count of at least 1",
                            )
                        },
                    )? as usize),
                };
                if classification.is_some() && o.name != ports.probabilities {
                    return Err(wrong(
                        "wrong_output",
                        format!(
                            "classification applies to `{}`, not `{}`",
                            ports.probabilities, o.name
                        ),
                    ));
                }
                Ok(Output {
                    name: o.name.clone(),
                    binary: param(&o.parameters, "binary_data")
                        .and_then(Value::as_bool)
                        .unwrap_or(default_binary),
                    classification,
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Request {
        id,
        input: input_data,
        outputs,
    })
}

fn parse_tensor(
    input: &RawInput,
    dtype: Dtype,
    binary: Option<Binary>,
    ports: &ModelPorts<'_>,
) -> Result<Input, V2Error> {
    let n = input.shape.first().copied().unwrap_or(0);
    if input.shape.len() != 4
        || input.shape[1..] != ports.image_shape
        || n < 1
        || n as usize > MAX_BATCH
    {
        let [a, b, c] = ports.image_shape;
        return Err(wrong(
            "wrong_shape",
            format!(
                "input `{}` must have shape [N, {a}, {b}, {c}] with 1 <= N <= {MAX_BATCH}; got {:?}",
                input.name, input.shape
            ),
        ));
    }
    let n = n as usize;
    let per_image: usize = ports.image_shape.iter().map(|d| *d as usize).product();
    let count = n * per_image;
    // Whether the values are known finite already (FP32 binary data, checked as it arrived).
    let mut finite = false;
    let values = match (&input.data, binary) {
        (Some(data), None) => {
            // Reserve no more than the JSON can hold (each number takes at least one byte).
            let mut out = Vec::with_capacity(count.min(1 << 20));
            flatten(data, dtype, count, &mut out)?;
            out
        }
        (None, Some(mut binary)) => {
            if binary.len() != count * dtype.width() {
                return Err(wrong(
                    "wrong_shape",
                    format!(
                        "{} binary bytes for shape {:?} of {}; {} expected",
                        binary.len(),
                        input.shape,
                        input.datatype,
                        count * dtype.width()
                    ),
                ));
            }
            match dtype {
                Dtype::Fp32 => {
                    let (values, all_finite) = binary.into_fp32();
                    finite = all_finite;
                    if !finite {
                        return Err(bad("bad_tensor", "tensor values must be finite"));
                    }
                    values
                }
                Dtype::Fp16 => binary
                    .as_bytes()
                    .chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
                Dtype::Uint8 | Dtype::Bytes => {
                    binary.as_bytes().iter().map(|b| f32::from(*b)).collect()
                }
            }
        }
        _ => {
            return Err(data_or_binary());
        }
    };
    if values.len() != count {
        return Err(wrong(
            "wrong_shape",
            format!(
                "{} values for shape {:?} ({count} expected)",
                values.len(),
                input.shape
            ),
        ));
    }
    // A fold rather than `any`: no early exit, so it runs vectorized over a large tensor.
    if !finite && !values.iter().fold(true, |ok, v| ok & v.is_finite()) {
        return Err(bad("bad_tensor", "tensor values must be finite"));
    }
    Ok(Input::Tensor { n, values })
}

/// Flattens nested JSON arrays of numbers (row-major), as the protocol allows either form;
/// stops past `max` values.
fn flatten(value: &Value, dtype: Dtype, max: usize, out: &mut Vec<f32>) -> Result<(), V2Error> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| flatten(v, dtype, max, out)),
        Value::Number(n) => {
            if out.len() >= max {
                return Err(wrong(
                    "wrong_shape",
                    format!("more than the {max} values the shape holds"),
                ));
            }
            let v = n.as_f64().unwrap_or(f64::NAN);
            let ok = match dtype {
                Dtype::Uint8 => v.fract() == 0.0 && (0.0..=255.0).contains(&v),
                _ => v.is_finite(),
            };
            if !ok {
                return Err(bad(
                    "bad_tensor",
                    format!(
                        "{v} is not a finite {} value",
                        match dtype {
                            Dtype::Uint8 => "UINT8",
                            Dtype::Fp16 => "FP16",
                            _ => "FP32",
                        }
                    ),
                ));
            }
            out.push(v as f32);
            Ok(())
        }
        _ => Err(bad("bad_tensor", "tensor data must be numbers")),
    }
}

/// A BYTES input of shape `[N]` or `[N, 1]`: each element one encoded image, given as binary
/// data (4-byte little-endian length, then the bytes) or as base64 strings in JSON.
fn parse_images(input: &RawInput, binary: Option<&[u8]>) -> Result<Input, V2Error> {
    let n = input.shape.first().copied().unwrap_or(0);
    let shape_ok = matches!(input.shape.as_slice(), [_] | [_, 1]);
    if !shape_ok || n < 1 || n as usize > MAX_BATCH {
        return Err(wrong(
            "wrong_shape",
            format!(
                "a BYTES input `{}` holds encoded images: shape [N] or [N, 1] with 1 <= N <= {MAX_BATCH}; got {:?}",
                input.name, input.shape
            ),
        ));
    }
    let n = n as usize;
    let images = match (&input.data, binary) {
        (None, Some(mut bytes)) => {
            let mut images = Vec::with_capacity(n);
            while !bytes.is_empty() {
                if bytes.len() < 4 {
                    return Err(bad("bad_tensor", "a BYTES element is cut short"));
                }
                let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                if len > bytes.len() - 4 {
                    return Err(bad("bad_tensor", "a BYTES element is longer than the body"));
                }
                images.push(bytes[4..4 + len].to_vec());
                bytes = &bytes[4 + len..];
                if images.len() > n {
                    break;
                }
            }
            images
        }
        (Some(data), None) => {
            let mut strings = Vec::with_capacity(n);
            collect_strings(data, &mut strings, n)?;
            strings
                .into_iter()
                .map(|s| {
                    base64_decode(s).ok_or_else(|| {
                        bad(
                            "bad_tensor",
                            "BYTES images in JSON must be base64 strings (or send binary data)",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => {
            return Err(data_or_binary());
        }
    };
    if images.len() != n {
        return Err(wrong(
            "wrong_shape",
            format!("{} images for shape {:?}", images.len(), input.shape),
        ));
    }
    Ok(Input::Images(images))
}

fn collect_strings<'a>(
    value: &'a Value,
    out: &mut Vec<&'a str>,
    max: usize,
) -> Result<(), V2Error> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| collect_strings(v, out, max)),
        Value::String(s) if out.len() < max => {
            out.push(s);
            Ok(())
        }
        Value::String(_) => Err(wrong("wrong_shape", "more images than the shape holds")),
        _ => Err(bad("bad_tensor", "BYTES data must be strings")),
    }
}

/// Standard base64 (padding optional), `None` when not base64.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let take = chunk.len() - 1;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + take]);
    }
    Some(out)
}

/// The BYTES wire form: each element as a 4-byte little-endian length and its bytes.
pub fn bytes_tensor(elements: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e.as_bytes());
    }
    out
}

/// The classification extension's elements for one row: the top `k` classes as
/// `"value:index:label"`, highest first.
pub fn classification(
    probabilities: &[f32],
    k: usize,
    labels: &[std::sync::Arc<str>],
) -> Vec<String> {
    crate::prediction::top_k(probabilities, k)
        .into_iter()
        .map(|(class, p)| format!("{p}:{class}:{}", labels.get(class).map_or("", |l| &**l)))
        .collect()
}

/// One output's values, ready to encode.
pub enum OutputData {
    Fp32 {
        shape: [usize; 2],
        values: Vec<f32>,
    },
    Bytes {
        shape: [usize; 2],
        values: Vec<String>,
    },
}

/// The answer: its JSON part and the binary part that follows it (empty: JSON only).
pub fn encode_response(
    model: &str,
    version: &str,
    id: &str,
    outputs: Vec<(Output, OutputData)>,
) -> (Vec<u8>, Vec<u8>) {
    let mut binary = Vec::new();
    let mut entries = Vec::with_capacity(outputs.len());
    for (output, data) in outputs {
        let (datatype, shape, raw, json_data) = match data {
            OutputData::Fp32 { shape, values } => {
                let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                ("FP32", shape, raw, json!(values))
            }
            OutputData::Bytes { shape, values } => {
                let raw = bytes_tensor(&values);
                ("BYTES", shape, raw, json!(values))
            }
        };
        let mut entry = json!({"name": output.name, "datatype": datatype, "shape": shape});
        if output.binary {
            entry["parameters"] = json!({"binary_data_size": raw.len()});
            binary.extend_from_slice(&raw);
        } else {
            entry["data"] = json_data;
        }
        entries.push(entry);
    }
    let header = json!({
        "model_name": model,
        "model_version": version,
        "id": id,
        "outputs": entries,
    });
    (
        serde_json::to_vec(&header).expect("JSON values serialize"),
        binary,
    )
}

/// A body compression of HTTP (`Content-Encoding`, `Accept-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    /// zlib, as HTTP's `deflate` means.
    Deflate,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Encoding> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Encoding::Gzip),
            "deflate" => Some(Encoding::Deflate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }

    /// The first encoding of an `Accept-Encoding` value that this side speaks (q=0 excluded).
    pub fn accepted(header: &str) -> Option<Encoding> {
        header.split(',').find_map(|item| {
            let mut parts = item.split(';');
            let name = parts.next()?;
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            if refused { None } else { Encoding::parse(name) }
        })
    }
}

/// Decompresses a body; `Err` with `too_large` set when it inflates past `limit` bytes.
pub fn decompress(
    body: &[u8],
    encoding: Encoding,
    limit: usize,
) -> Result<Vec<u8>, (bool, String)> {
    let mut out = Vec::new();
    let take = limit as u64 + 1;
    let read = match encoding {
        Encoding::Gzip => flate2::read::GzDecoder::new(body)
            .take(take)
            .read_to_end(&mut out),
        Encoding::Deflate => flate2::read::ZlibDecoder::new(body)
            .take(take)
            .read_to_end(&mut out),
    };
    match read {
        Err(e) => Err((
            false,
            format!("the {} body does not decompress: {e}", encoding.as_str()),
        )),
        Ok(_) if out.len() > limit => {
            Err((true, format!("the body decompresses past {limit} bytes")))
        }
        Ok(_) => Ok(out),
    }
}

pub fn compress(body: &[u8], encoding: Encoding) -> Vec<u8> {
    let level = flate2::Compression::fast();
    let result = match encoding {
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(body).and_then(|()| e.finish())
        }
        Encoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(body).and_then(|()| e.finish())
        }
    };
    result.expect("compressing into memory cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: ModelPorts<'static> = ModelPorts {
        input: "image",
        image_shape: [1, 2, 2],
        probabilities: "probabilities",
        embedding: Some("embedding"),
    };

    #[test]
    fn half_floats() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x7bff, 65504.0),
            (0x0000, 0.0),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn tensors_of_every_dtype() {
        let json = br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"UINT8","data":[0,1,2,255]}]}"#;
        let r = parse_request(json, &[], &PORTS).unwrap();
        assert_eq!(
            r.input,
            Input::Tensor {
                n: 1,
                values: vec![0.0, 1.0, 2.0, 255.0]
            }
        );
        assert!(r.outputs.iter().all(|o| !o.binary));
        let json = br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"FP16","parameters":{"binary_data_size":8}}],"parameters":{"binary_data_output":true}}"#;
        let bin: Vec<u8> = [0x3c00u16, 0xc000, 0, 0x3800]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let r = parse_request(json, &bin, &PORTS).unwrap();
        assert_eq!(
            r.input,
            Input::Tensor {
                n: 1,
                values: vec![1.0, -2.0, 0.0, 0.5]
            }
        );
        assert_eq!(r.outputs.len(), 2);
        assert!(r.outputs.iter().all(|o| o.binary));
        // UINT8 out of range, wrong shape, wrong dtype.
        let e = parse_request(br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"UINT8","data":[0,1,2,256]}]}"#, &[], &PORTS).unwrap_err();
        assert_eq!(e.code, "bad_tensor");
        let e = parse_request(br#"{"inputs":[{"name":"image","shape":[1,1,3,2],"datatype":"FP32","data":[0,1,2,3,4,5]}]}"#, &[], &PORTS).unwrap_err();
        assert_eq!((e.code, e.unprocessable), ("wrong_shape", true));
        let e = parse_request(br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"INT64","data":[0,1,2,3]}]}"#, &[], &PORTS).unwrap_err();
        assert_eq!(e.code, "wrong_dtype");
        // Too many values for the shape stop early.
        let e = parse_request(br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"FP32","data":[0,1,2,3,4]}]}"#, &[], &PORTS).unwrap_err();
        assert_eq!(e.code, "wrong_shape");
    }

    #[test]
    fn outputs_classification_and_binary_default() {
        let json = br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"FP32","data":[[0,1],[2,3]]}],
            "outputs":[{"name":"probabilities","parameters":{"classification":3}},{"name":"embedding","parameters":{"binary_data":false}}],
            "parameters":{"binary_data_output":true}}"#;
        let r = parse_request(json, &[], &PORTS).unwrap();
        assert_eq!(
            r.outputs,
            vec![
                Output {
                    name: "probabilities".into(),
                    binary: true,
                    classification: Some(3)
                },
                Output {
                    name: "embedding".into(),
                    binary: false,
                    classification: None
                },
            ]
        );
        let e = parse_request(br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"FP32","data":[0,1,2,3]}],"outputs":[{"name":"nope"}]}"#, &[], &PORTS).unwrap_err();
        assert_eq!(e.code, "wrong_output");
        let labels: Vec<std::sync::Arc<str>> =
            ["a", "b", "c"].iter().map(|s| (*s).into()).collect();
        assert_eq!(
            classification(&[0.2, 0.7, 0.1], 2, &labels),
            ["0.7:1:b", "0.2:0:a"]
        );
    }

    #[test]
    fn bytes_images_binary_and_base64() {
        let images = vec!["\u{89}PNG".to_string(), "xyz".to_string()];
        let bin = bytes_tensor(&images);
        let json = format!(
            r#"{{"inputs":[{{"name":"image","shape":[2],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
            bin.len()
        );
        let r = parse_request(json.as_bytes(), &bin, &PORTS).unwrap();
        assert_eq!(
            r.input,
            Input::Images(vec![images[0].as_bytes().to_vec(), b"xyz".to_vec()])
        );
        let json = br#"{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","data":["aGVsbG8="]}]}"#;
        let r = parse_request(json, &[], &PORTS).unwrap();
        assert_eq!(r.input, Input::Images(vec![b"hello".to_vec()]));
        // A length that runs past the body.
        let mut cut = bytes_tensor(&["abcdef".into()]);
        cut.truncate(6);
        let json = br#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#;
        assert_eq!(
            parse_request(json, &cut, &PORTS).unwrap_err().code,
            "bad_tensor"
        );
    }

    /// Bytes pushed in any pieces come back as they were sent, FP32 words land whole, and the
    /// finiteness is the plain check's.
    #[test]
    fn binary_parts_keep_their_bytes_however_they_arrive() {
        let floats = [1.5f32, -0.0, 3.25e-39, f32::MAX, -7.0, 0.1];
        let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        for cuts in [
            vec![],
            vec![1],
            vec![3, 4, 5],
            vec![2, 9, 10, 11, 17, 23],
            (1..24).collect(),
        ] {
            let mut b = Binary::with_capacity(if cuts.len() == 1 { 0 } else { bytes.len() });
            let mut from = 0;
            for cut in cuts.iter().copied().chain([bytes.len()]) {
                b.push(&bytes[from..cut]);
                from = cut;
            }
            assert_eq!(b.len(), bytes.len());
            assert_eq!(b.as_bytes(), bytes.as_slice(), "{cuts:?}");
            let (values, finite) = b.into_fp32();
            assert!(finite);
            assert_eq!(
                values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                floats.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{cuts:?}"
            );
        }
        // An odd length: the bytes, nothing more; pushing after reading them goes on as before.
        let mut b = Binary::from_slice(&bytes[..7]);
        assert_eq!(b.as_bytes(), &bytes[..7]);
        b.push(&bytes[7..10]);
        assert_eq!(b.as_bytes(), &bytes[..10]);
        b.push(&bytes[10..]);
        assert_eq!(b.as_bytes(), bytes.as_slice());
        assert!(Binary::default().is_empty());
        // Non-finite values, whole or cut across pushes, are seen.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut with_bad = bytes.clone();
            with_bad[8..12].copy_from_slice(&bad.to_le_bytes());
            for cut in [0, 9, 10, 12] {
                let mut b = Binary::from_slice(&with_bad[..cut]);
                b.push(&with_bad[cut..]);
                assert!(!b.into_fp32().1, "{bad} cut at {cut}");
            }
        }
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode("TQ").unwrap(), b"M");
        assert!(base64_decode("T").is_none());
        assert!(base64_decode("T$==").is_none());
    }

    #[test]
    fn compression_round_trip_and_limit() {
        let body = vec![7u8; 10_000];
        for e in [Encoding::Gzip, Encoding::Deflate] {
            let packed = compress(&body, e);
            assert!(packed.len() < 200);
            assert_eq!(decompress(&packed, e, 10_000).unwrap(), body);
            assert!(decompress(&packed, e, 9_999).unwrap_err().0);
            assert!(!decompress(b"not compressed", e, 100).unwrap_err().0);
        }
        assert_eq!(Encoding::accepted("br, gzip;q=0.5"), Some(Encoding::Gzip));
        assert_eq!(
            Encoding::accepted("gzip;q=0, deflate"),
            Some(Encoding::Deflate)
        );
        assert_eq!(Encoding::accepted("identity"), None);
    }
}
