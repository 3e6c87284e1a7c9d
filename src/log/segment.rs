//! The write-ahead segment format, and its decoder: total (any bytes give a result, never a
//! panic), bounded (no allocation larger than the bytes it was given), and honest about where
//! the valid part ends.
//!
//! A segment `wal/<stream>[/model=<name>]/<uuid>.wal` is a sequence of frames:
//!
//! ```text
//! magic "SWF1" | payload length: u32 LE | payload CRC-32: u32 LE | header CRC-32: u32 LE | payload
//! ```
//!
//! The header CRC-32 covers the 12 bytes before it (so a damaged length is told from a write cut
//! short), the payload CRC-32 the payload. The first frame's payload is the Arrow IPC schema
//! message of the segment, every later frame's payload one Arrow IPC record-batch message (one
//! appended batch). The schema is written once per segment: strict durability writes batches of
//! a few rows, which a schema per frame would multiply in size.
//!
//! A batch frame of the prediction stream may instead be a row frame: its payload starts with
//! [`ROW_TAG`] (an Arrow IPC message starts with `0xFFFFFFFF`, never with it), and the rest is
//! rows encoded as they are (`super::rows`), which a reader given a row decoder
//! ([`SegmentReader::with_rows`]) turns into a batch of the wanted schema. The writer uses them
//! for predictions; a segment may hold both kinds.
//!
//! Segments of versions before the framing (`<uuid>.arrows`, a plain Arrow IPC stream without
//! checksums) are still read: [`decode_segment`] tells the two apart by their first bytes.
//!
//! A batch frame whose header is sound (its own CRC-32 vouches for the length) but whose payload
//! fails its CRC or is not a batch is passed over ([`SegmentReader::skipped`]) and reading goes
//! on after it; anything else that is not valid (the schema frame, a header, a torn end) stops
//! the decoding there, saying why ([`QuarantineReason`]) and at which byte offset. The Arrow IPC reader is third-party code that
//! panics on some malformed input: it only sees payloads whose checksum holds (legacy messages,
//! which have none, are split and bounded here first), each message is checked first against
//! what the reader would assert (flatbuffer verified, buffers inside the body, aligned, whole
//! values, node and buffer counts of the schema), each decode runs under `catch_unwind`, and a
//! panic counts as a malformed frame.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_ipc::MetadataVersion;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::{ArrowError, DataType, Schema, SchemaRef};

use crate::metrics::QuarantineReason;

/// The file extension of framed segments.
pub const EXTENSION: &str = "wal";
/// The file extension of segments written before the framing (plain Arrow IPC streams).
pub const LEGACY_EXTENSION: &str = "arrows";
/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SWF1";
/// Bytes of a frame before its payload.
pub const HEADER_LEN: usize = 16;
/// The first four bytes of a row frame's payload.
pub const ROW_TAG: [u8; 4] = *b"SWR1";
/// Decodes a row frame's payload (after [`ROW_TAG`]) into a batch of the wanted schema.
pub type RowDecoder<'d> = &'d dyn Fn(&[u8]) -> Result<RecordBatch, String>;
/// How an Arrow IPC stream (a legacy segment) starts: the continuation marker.
const IPC_CONTINUATION: [u8; 4] = [0xff; 4];

/// Turns record batches into frames (one writer per segment).
pub struct SegmentEncoder {
    ipc: StreamWriter<Vec<u8>>,
}

impl std::fmt::Debug for SegmentEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentEncoder").finish()
    }
}

impl SegmentEncoder {
    /// An encoder for a new segment, and the segment's first frame (its schema).
    pub fn new(schema: &Schema) -> Result<(Self, Vec<u8>), ArrowError> {
        // Buffers aligned to 8 bytes (what the format requires) rather than the writer's
        // default 64: a batch of one row, as strict durability writes, is a quarter the size.
        let options = IpcWriteOptions::try_new(8, false, MetadataVersion::V5)?;
        let mut ipc = StreamWriter::try_new_with_options(Vec::new(), schema, options)?;
        let mut first = Vec::new();
        push_frame(ipc.get_mut(), &mut first)?;
        ipc.get_mut().clear();
        Ok((SegmentEncoder { ipc }, first))
    }

    /// Appends the frame of one batch to `out`.
    pub fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ArrowError> {
        self.ipc.get_mut().clear();
        self.ipc.write(batch)?;
        push_frame(self.ipc.get_mut(), out)?;
        self.ipc.get_mut().clear();
        Ok(())
    }
}

/// Appends one frame holding `payload` to `out`.
pub fn push_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), ArrowError> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        ArrowError::InvalidArgumentError(format!(
            "a write-ahead frame holds at most 4 GiB, this batch is {} bytes",
            payload.len()
        ))
    })?;
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..12].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&header[..12]);
    header[12..].copy_from_slice(&header_crc.to_le_bytes());
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

/// Where and why decoding stopped before the end of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub reason: QuarantineReason,
    /// Byte offset where the part that was not decoded starts (everything before it is in
    /// the batches returned).
    pub offset: u64,
    pub detail: String,
}

impl Stop {
    fn new(reason: QuarantineReason, offset: u64, detail: impl Into<String>) -> Self {
        Stop {
            reason,
            offset,
            detail: detail.into(),
        }
    }
}

/// What a segment holds: its valid batches, in order, in the schema asked for; and, when it
/// did not decode to its end, where and why it stopped.
#[derive(Debug)]
pub struct DecodedSegment {
    pub batches: Vec<RecordBatch>,
    /// Damaged frames passed over (the batches around them are kept).
    pub skipped: Vec<Stop>,
    pub stop: Option<Stop>,
}

impl DecodedSegment {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Decodes a whole segment held in memory (framed or legacy) into batches of `schema`. Total:
/// any bytes give a result; never panics.
pub fn decode_segment(bytes: &[u8], schema: &SchemaRef) -> DecodedSegment {
    decode_segment_with(bytes, schema, None)
}

/// [`decode_segment`], with row frames decoded by `rows` (without one they are passed over as
/// malformed).
pub fn decode_segment_with(
    bytes: &[u8],
    schema: &SchemaRef,
    rows: Option<RowDecoder<'_>>,
) -> DecodedSegment {
    let mut reader = SegmentReader::new(bytes, bytes.len() as u64, schema);
    reader.rows = rows;
    let mut batches = Vec::new();
    loop {
        match reader.next_batch() {
            Ok(Some(batch)) => batches.push(batch),
            Ok(None) => {
                return DecodedSegment {
                    batches,
                    skipped: reader.skipped,
                    stop: None,
                };
            }
            Err(stop) => {
                return DecodedSegment {
                    batches,
                    skipped: reader.skipped,
                    stop: Some(stop),
                };
            }
        }
    }
}

/// How a column of the wanted schema is filled from a segment's batch.
#[derive(Debug, Clone, Copy)]
enum Source {
    Column(usize),
    /// Absent from the segment and nullable now: all nulls.
    Nulls,
}

/// Maps batches of the segment's schema onto the wanted one.
#[derive(Debug)]
struct Adapter {
    want: SchemaRef,
    sources: Vec<Source>,
    /// Columns the segment has and the wanted schema does not (left out).
    dropped: Vec<String>,
}

impl Adapter {
    /// Fails (naming the column) when a column the wanted schema requires is missing or has
    /// another type.
    fn new(found: &Schema, want: &SchemaRef) -> Result<Self, String> {
        let mut sources = Vec::with_capacity(want.fields().len());
        for field in want.fields() {
            match found.index_of(field.name()) {
                Ok(i) => {
                    let have = found.field(i);
                    if have.data_type() != field.data_type() {
                        return Err(format!(
                            "column `{}` is {} in the segment, {} now",
                            field.name(),
                            have.data_type(),
                            field.data_type()
                        ));
                    }
                    sources.push(Source::Column(i));
                }
                Err(_) if field.is_nullable() => sources.push(Source::Nulls),
                Err(_) => {
                    return Err(format!(
                        "the segment has no column `{}`, which is required now",
                        field.name()
                    ));
                }
            }
        }
        let dropped = found
            .fields()
            .iter()
            .filter(|f| want.field_with_name(f.name()).is_err())
            .map(|f| f.name().clone())
            .collect();
        Ok(Adapter {
            want: Arc::clone(want),
            sources,
            dropped,
        })
    }

    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, (QuarantineReason, String)> {
        let rows = batch.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.sources.len());
        for (field, source) in self.want.fields().iter().zip(&self.sources) {
            match *source {
                Source::Column(i) => {
                    let column = batch.columns().get(i).ok_or_else(|| {
                        (
                            QuarantineReason::Malformed,
                            format!("the batch has no column {i}"),
                        )
                    })?;
                    if !field.is_nullable() && column.null_count() > 0 {
                        return Err((
                            QuarantineReason::Schema,
                            format!("column `{}` holds nulls, and is required now", field.name()),
                        ));
                    }
                    columns.push(Arc::clone(column));
                }
                Source::Nulls => columns.push(new_null_array(field.data_type(), rows)),
            }
        }
        RecordBatch::try_new(Arc::clone(&self.want), columns)
            .map_err(|e| (QuarantineReason::Schema, e.to_string()))
    }
}

enum State {
    Start,
    Reading {
        /// A plain Arrow IPC stream (no frames, no checksums).
        legacy: bool,
        /// The segment's schema message, decoded again before each batch.
        schema_payload: Vec<u8>,
        /// The segment's own schema (the one its batches were written with).
        found: SchemaRef,
        adapter: Adapter,
    },
    Done,
}

/// Reads a segment batch by batch from any reader whose total length is known (a file in
/// recovery, a slice in [`decode_segment`]): frame lengths are bounded by the bytes left, so
/// memory stays within one frame and its batch.
pub struct SegmentReader<'a> {
    src: Option<Box<dyn Read + 'a>>,
    len: u64,
    /// Start of the next frame (bytes before it were decoded into batches).
    offset: u64,
    want: SchemaRef,
    state: State,
    /// Columns of the segment's schema that the wanted one lacks (kept after the end).
    dropped: Vec<String>,
    /// Damaged frames passed over (their payload's CRC or content is bad, their header sound).
    skipped: Vec<Stop>,
    /// Decodes row frames; without it they are passed over as malformed.
    rows: Option<RowDecoder<'a>>,
}

fn io_stop(offset: u64, what: &str, e: &std::io::Error) -> Stop {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Stop::new(
            QuarantineReason::Torn,
            offset,
            format!("the file ends inside {what}"),
        )
    } else {
        Stop::new(
            QuarantineReason::Unreadable,
            offset,
            format!("reading {what}: {e}"),
        )
    }
}

/// Runs a third-party decode, turning a panic into an error.
fn contained<T>(f: impl FnOnce() -> Result<T, ArrowError>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the Arrow IPC decoder panicked on this payload".into()),
    }
}

impl<'a> SegmentReader<'a> {
    /// `len`: the bytes `src` holds.
    pub fn new(src: impl Read + 'a, len: u64, want: &SchemaRef) -> Self {
        SegmentReader {
            src: Some(Box::new(src)),
            len,
            offset: 0,
            want: Arc::clone(want),
            state: State::Start,
            dropped: Vec::new(),
            skipped: Vec::new(),
            rows: None,
        }
    }

    /// Row frames are decoded by `decoder` (panics in it count as a malformed frame).
    pub fn with_rows(mut self, decoder: RowDecoder<'a>) -> Self {
        self.rows = Some(decoder);
        self
    }

    /// The damaged frames passed over so far, in order: a frame whose header (with its own
    /// CRC) is sound but whose payload is not is skipped, and reading goes on after it.
    pub fn skipped(&self) -> &[Stop] {
        &self.skipped
    }

    /// Columns the segment holds that the wanted schema does not have (they are left out);
    /// known once its schema frame is read, and still after the last batch.
    pub fn dropped_columns(&self) -> &[String] {
        &self.dropped
    }

    /// The next valid batch; `Ok(None)` at a clean end; `Err` where the segment stops being
    /// valid (every later call returns `Ok(None)`).
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, Stop> {
        let result = self.step();
        if !matches!(result, Ok(Some(_))) {
            self.state = State::Done;
            self.src = None;
        }
        result
    }

    fn step(&mut self) -> Result<Option<RecordBatch>, Stop> {
        loop {
            match &mut self.state {
                State::Done => return Ok(None),
                State::Start => self.start()?,
                State::Reading {
                    legacy,
                    schema_payload,
                    found,
                    adapter,
                } => {
                    let at = self.offset;
                    let Some(src) = self.src.as_mut() else {
                        return Ok(None);
                    };
                    let (payload, size) = if *legacy {
                        match read_ipc_message(src, self.len, at)? {
                            Some(m) => {
                                let size = m.len();
                                (m, size)
                            }
                            None => return Ok(None),
                        }
                    } else {
                        match read_frame(src, self.len, at)? {
                            Some((p, intact)) => {
                                let size = HEADER_LEN + p.len();
                                if !intact {
                                    // The header's own CRC vouches for the length: skip this
                                    // frame, keep reading the ones after it.
                                    self.skipped.push(Stop::new(
                                        QuarantineReason::Checksum,
                                        at,
                                        "the frame payload's CRC-32 does not match",
                                    ));
                                    self.offset = at + size as u64;
                                    continue;
                                }
                                (p, size)
                            }
                            None => return Ok(None),
                        }
                    };
                    let bad = |reason, detail: String| Stop::new(reason, at, detail);
                    if !*legacy && payload.starts_with(&ROW_TAG) {
                        // Rows decode straight into the wanted schema: no adapter.
                        let decoded = match self.rows {
                            None => Err("a row frame, and no row decoder for this stream".into()),
                            Some(decode) => {
                                match catch_unwind(AssertUnwindSafe(|| decode(&payload[4..]))) {
                                    Ok(result) => result,
                                    Err(_) => Err("the row decoder panicked".into()),
                                }
                            }
                        };
                        self.offset = at + size as u64;
                        match decoded {
                            Ok(batch) if batch.schema().fields() == self.want.fields() => {
                                return Ok(Some(batch));
                            }
                            Ok(_) => self.skipped.push(bad(
                                QuarantineReason::Malformed,
                                "rows decoded to another schema".into(),
                            )),
                            Err(e) => self.skipped.push(bad(QuarantineReason::Malformed, e)),
                        }
                        continue;
                    }
                    let batch = match decode_batch(schema_payload, found, &payload) {
                        Ok(b) => b,
                        // A framed payload that is not a batch: its length is known, so the
                        // frames after it can still be read. A legacy stream has no such
                        // boundary to trust.
                        Err(e) if !*legacy => {
                            self.skipped.push(bad(QuarantineReason::Malformed, e));
                            self.offset = at + size as u64;
                            continue;
                        }
                        Err(e) => return Err(bad(QuarantineReason::Malformed, e)),
                    };
                    let batch = adapter.apply(&batch).map_err(|(r, d)| bad(r, d))?;
                    self.offset = at + size as u64;
                    return Ok(Some(batch));
                }
            }
        }
    }

    /// Tells a framed segment from a legacy one, and reads its schema.
    fn start(&mut self) -> Result<(), Stop> {
        let Some(mut src) = self.src.take() else {
            self.state = State::Done;
            return Ok(());
        };
        if self.len == 0 {
            self.state = State::Done;
            return Ok(());
        }
        if self.len < 4 {
            return Err(Stop::new(
                QuarantineReason::Torn,
                0,
                "the file ends inside the first frame header",
            ));
        }
        let mut first = [0u8; 4];
        src.read_exact(&mut first)
            .map_err(|e| io_stop(0, "the first frame header", &e))?;
        let mut src: Box<dyn Read + 'a> = Box::new(std::io::Cursor::new(first).chain(src));
        let legacy = match first {
            MAGIC => false,
            IPC_CONTINUATION => true,
            _ => {
                return Err(Stop::new(
                    QuarantineReason::Checksum,
                    0,
                    "not a write-ahead segment (no frame magic, no Arrow IPC stream)",
                ));
            }
        };
        let (schema_payload, size) = if legacy {
            let m = read_ipc_message(&mut src, self.len, 0)?;
            let size = m.as_ref().map_or(0, Vec::len);
            (m, size)
        } else {
            let p = match read_frame(&mut src, self.len, 0)? {
                Some((_, false)) => {
                    return Err(Stop::new(
                        QuarantineReason::Checksum,
                        0,
                        "the schema frame's payload CRC-32 does not match",
                    ));
                }
                Some((p, true)) => Some(p),
                None => None,
            };
            let size = p.as_ref().map_or(0, |p| HEADER_LEN + p.len());
            (p, size)
        };
        let Some(schema_payload) = schema_payload else {
            return Err(Stop::new(QuarantineReason::Torn, 0, "no schema"));
        };
        let bad = |reason, detail: String| Stop::new(reason, 0, detail);
        let found =
            decode_schema(&schema_payload).map_err(|e| bad(QuarantineReason::Malformed, e))?;
        let adapter =
            Adapter::new(&found, &self.want).map_err(|e| bad(QuarantineReason::Schema, e))?;
        self.offset = size as u64;
        self.src = Some(src);
        self.dropped.clone_from(&adapter.dropped);
        self.state = State::Reading {
            legacy,
            schema_payload,
            found,
            adapter,
        };
        Ok(())
    }
}

/// The schema from a schema message (and nothing else).
fn decode_schema(payload: &[u8]) -> Result<SchemaRef, String> {
    if payload.len() < 8 || payload[..4] != IPC_CONTINUATION {
        return Err("the schema is not an Arrow IPC message".into());
    }
    contained(|| {
        let mut reader = StreamReader::try_new(payload, None)?;
        let schema = reader.schema();
        match reader.next() {
            None => Ok(schema),
            Some(_) => Err(ArrowError::IpcError(
                "the schema message is followed by more".into(),
            )),
        }
    })
}

/// Reads one Arrow IPC message of a legacy segment at `offset` (continuation marker, metadata
/// length, metadata, body); `Ok(None)` at the end or at the end-of-stream marker. Lengths are
/// checked against the bytes left before anything is allocated for them.
fn read_ipc_message(src: &mut dyn Read, len: u64, offset: u64) -> Result<Option<Vec<u8>>, Stop> {
    let left = len.saturating_sub(offset);
    if left == 0 {
        return Ok(None);
    }
    let torn = |detail: String| Stop::new(QuarantineReason::Torn, offset, detail);
    if left < 8 {
        return Err(torn(format!(
            "the file ends inside a message header ({left} bytes left)"
        )));
    }
    let mut head = [0u8; 8];
    src.read_exact(&mut head)
        .map_err(|e| io_stop(offset, "a message header", &e))?;
    if head[..4] != IPC_CONTINUATION {
        return Err(Stop::new(
            QuarantineReason::Malformed,
            offset,
            "no Arrow IPC continuation marker where a message starts",
        ));
    }
    let meta_len = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
    if meta_len == 0 {
        return Ok(None);
    }
    if meta_len > left - 8 {
        return Err(torn(format!(
            "the message metadata is {meta_len} bytes, the file ends after {}",
            left - 8
        )));
    }
    let mut message = head.to_vec();
    message.resize(8 + meta_len as usize, 0);
    src.read_exact(&mut message[8..])
        .map_err(|e| io_stop(offset, "a message's metadata", &e))?;
    let body_len = arrow_ipc::root_as_message(&message[8..])
        .map_err(|e| format!("the message metadata is not valid: {e}"))
        .and_then(|m| u64::try_from(m.bodyLength()).map_err(|_| "negative body length".into()))
        .map_err(|e| Stop::new(QuarantineReason::Malformed, offset, e))?;
    let body_left = left - 8 - meta_len;
    if body_len > body_left {
        return Err(torn(format!(
            "the message body is {body_len} bytes, the file ends after {body_left}"
        )));
    }
    let start = message.len();
    message.resize(start + body_len as usize, 0);
    src.read_exact(&mut message[start..])
        .map_err(|e| io_stop(offset, "a message body", &e))?;
    Ok(Some(message))
}

/// Reads one frame at `offset`; `Ok(None)` when no bytes are left. The payload's length is
/// checked against the bytes left before anything is allocated for it.
/// The next frame: its payload, and whether the payload's CRC-32 matches. A payload that does
/// not match is still returned (whole: its length is vouched for by the header's own CRC), so
/// that the frames after it can be read.
fn read_frame(src: &mut dyn Read, len: u64, offset: u64) -> Result<Option<(Vec<u8>, bool)>, Stop> {
    let left = len.saturating_sub(offset);
    if left == 0 {
        return Ok(None);
    }
    if left < HEADER_LEN as u64 {
        return Err(Stop::new(
            QuarantineReason::Torn,
            offset,
            format!("the file ends inside a frame header ({left} bytes left)"),
        ));
    }
    let mut header = [0u8; HEADER_LEN];
    src.read_exact(&mut header)
        .map_err(|e| io_stop(offset, "a frame header", &e))?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if header[..4] != MAGIC {
        return Err(Stop::new(
            QuarantineReason::Checksum,
            offset,
            "no frame magic where a frame starts",
        ));
    }
    if crc32fast::hash(&header[..12]) != word(12) {
        return Err(Stop::new(
            QuarantineReason::Checksum,
            offset,
            "the frame header's CRC-32 does not match",
        ));
    }
    let payload_len = u64::from(word(4));
    let body_left = left - HEADER_LEN as u64;
    if payload_len > body_left {
        return Err(Stop::new(
            QuarantineReason::Torn,
            offset,
            format!("the frame holds {payload_len} bytes, the file ends after {body_left}"),
        ));
    }
    // Bounded: at most the bytes the source still holds.
    let mut payload = vec![0u8; payload_len as usize];
    src.read_exact(&mut payload)
        .map_err(|e| io_stop(offset, "a frame payload", &e))?;
    let intact = crc32fast::hash(&payload) == word(8);
    Ok(Some((payload, intact)))
}

/// One record batch from a frame's payload, with the segment's schema message before it.
fn decode_batch(
    schema_payload: &[u8],
    found: &Schema,
    payload: &[u8],
) -> Result<RecordBatch, String> {
    check_batch_message(found, payload)?;
    let batch = contained(|| {
        let mut reader = StreamReader::try_new(schema_payload.chain(payload), None)?;
        let batch = reader
            .next()
            .ok_or_else(|| ArrowError::IpcError("the frame holds no record batch".into()))??;
        if !reader.get_ref().get_ref().1.is_empty() {
            return Err(ArrowError::IpcError(
                "the frame holds more than one message".into(),
            ));
        }
        Ok(batch)
    })?;
    // Every column costs at least a bit per row: a row count beyond that is a lie, and would
    // size the null columns made for it.
    if batch.num_rows() as u64 > (payload.len() as u64).saturating_mul(8) {
        return Err(format!(
            "the batch claims {} rows in {} bytes",
            batch.num_rows(),
            payload.len()
        ));
    }
    Ok(batch)
}

/// The field nodes a column of `data_type` has in an IPC record batch (returned) and the
/// element size of each of its buffers (pushed to `units`: a buffer's length is a multiple of
/// it); `None` for types this does not know (left to the decoder's own checks).
fn layout(data_type: &DataType, units: &mut Vec<u64>) -> Option<usize> {
    Some(match data_type {
        DataType::Null => 1,
        DataType::Utf8 | DataType::Binary => {
            units.extend([1, 4, 1]);
            1
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            units.extend([1, 8, 1]);
            1
        }
        DataType::List(f) => {
            units.extend([1, 4]);
            1 + layout(f.data_type(), units)?
        }
        DataType::LargeList(f) => {
            units.extend([1, 8]);
            1 + layout(f.data_type(), units)?
        }
        DataType::FixedSizeList(f, _) => {
            units.push(1);
            1 + layout(f.data_type(), units)?
        }
        DataType::Struct(fields) => {
            units.push(1);
            let mut nodes = 1;
            for f in fields {
                nodes += layout(f.data_type(), units)?;
            }
            nodes
        }
        DataType::Boolean | DataType::FixedSizeBinary(_) => {
            units.extend([1, 1]);
            1
        }
        t => {
            let width = t.primitive_width()?;
            units.extend([1, width as u64]);
            1
        }
    })
}

/// Checks a record-batch message against what the Arrow IPC reader would otherwise assert
/// (and panic on): the flatbuffer is verified, the body is the rest of the payload, every
/// buffer lies inside the body at an 8-byte boundary, node and buffer counts match the
/// segment's schema, no compression, counts are not negative, and the row count is bounded by
/// the bytes.
fn check_batch_message(found: &Schema, payload: &[u8]) -> Result<(), String> {
    if payload.len() < 8 || payload[..4] != IPC_CONTINUATION {
        return Err("the payload is not an Arrow IPC message".into());
    }
    let meta_len = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize;
    let meta_end = 8usize
        .checked_add(meta_len)
        .filter(|&e| e <= payload.len())
        .ok_or("the message metadata runs past the frame")?;
    let message = arrow_ipc::root_as_message(&payload[8..meta_end])
        .map_err(|e| format!("the message metadata is not valid: {e}"))?;
    let batch = message
        .header_as_record_batch()
        .ok_or("the message is not a record batch")?;
    let body_len =
        u64::try_from(message.bodyLength()).map_err(|_| "negative body length".to_string())?;
    if (meta_end as u64).checked_add(body_len) != Some(payload.len() as u64) {
        return Err(format!(
            "the body is {body_len} bytes, the frame holds {} after the metadata",
            payload.len() - meta_end
        ));
    }
    if meta_end % 8 != 0 {
        return Err("the body does not start at an 8-byte boundary".into());
    }
    if batch.compression().is_some() {
        return Err("compressed batches are not written here".into());
    }
    let rows = u64::try_from(batch.length()).map_err(|_| "negative row count".to_string())?;
    if rows > (payload.len() as u64).saturating_mul(8) {
        return Err(format!(
            "the batch claims {rows} rows in {} bytes",
            payload.len()
        ));
    }
    let nodes = batch.nodes().ok_or("the batch has no field nodes")?;
    let buffers = batch.buffers().ok_or("the batch has no buffers")?;
    for node in nodes.iter() {
        let (length, nulls) = (node.length(), node.null_count());
        if length < 0 || nulls < 0 || nulls > length {
            return Err(format!(
                "a field node claims {length} values, {nulls} nulls"
            ));
        }
        if length as u64 > body_len.saturating_add(1).saturating_mul(8) {
            return Err(format!(
                "a field node claims {length} values in {body_len} bytes"
            ));
        }
    }
    let mut units = Vec::new();
    let expected_nodes = found.fields().iter().try_fold(0, |n, f| {
        layout(f.data_type(), &mut units).map(|fnodes| n + fnodes)
    });
    if let Some(n) = expected_nodes
        && (nodes.len() != n || buffers.len() != units.len())
    {
        return Err(format!(
            "the batch has {} field nodes and {} buffers, its schema {n} and {}",
            nodes.len(),
            buffers.len(),
            units.len()
        ));
    }
    for (i, buffer) in buffers.iter().enumerate() {
        let (offset, length) = (buffer.offset(), buffer.length());
        let (Ok(offset), Ok(length)) = (u64::try_from(offset), u64::try_from(length)) else {
            return Err(format!("a buffer at {offset} of {length} bytes"));
        };
        if offset.checked_add(length).is_none_or(|end| end > body_len) {
            return Err(format!(
                "a buffer at {offset} of {length} bytes lies outside the {body_len}-byte body"
            ));
        }
        if offset % 8 != 0 {
            return Err(format!("a buffer at {offset} is not 8-byte aligned"));
        }
        let unit = if expected_nodes.is_some() {
            units[i]
        } else {
            1
        };
        if length % unit != 0 {
            return Err(format!(
                "a buffer of {length} bytes holds {unit}-byte values"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int32Array, StringArray};
    use arrow_ipc::writer::StreamWriter;
    use arrow_schema::{DataType, Field};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int32, false),
            Field::new("note", DataType::Utf8, true),
        ]))
    }

    fn batch(schema: &SchemaRef, from: i32, rows: i32) -> RecordBatch {
        let ids: Vec<String> = (from..from + rows).map(|i| format!("row-{i}")).collect();
        let notes: Vec<Option<&str>> = (0..rows).map(|i| (i % 2 == 0).then_some("x")).collect();
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Int32Array::from_iter_values(from..from + rows)),
                Arc::new(StringArray::from(notes)),
            ],
        )
        .unwrap()
    }

    /// A segment of `batches` batches of 3 rows; returns it and each frame's start offset.
    fn segment(schema: &SchemaRef, batches: i32) -> (Vec<u8>, Vec<usize>) {
        let (mut encoder, mut bytes) = SegmentEncoder::new(schema).unwrap();
        let mut starts = Vec::new();
        for b in 0..batches {
            starts.push(bytes.len());
            encoder
                .encode(&batch(schema, b * 3, 3), &mut bytes)
                .unwrap();
        }
        (bytes, starts)
    }

    fn ids(decoded: &DecodedSegment) -> Vec<String> {
        decoded
            .batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                (0..a.len())
                    .map(|i| a.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn columns_left_out_are_still_known_after_the_last_batch() {
        let (bytes, _) = segment(&schema(), 2);
        let want: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int32, false),
        ]));
        let mut reader = SegmentReader::new(&bytes[..], bytes.len() as u64, &want);
        let mut rows = 0;
        while let Some(b) = reader.next_batch().unwrap() {
            assert_eq!(b.schema(), want);
            rows += b.num_rows();
        }
        assert_eq!(rows, 6);
        assert_eq!(reader.dropped_columns(), ["note".to_string()]);
    }

    #[test]
    fn a_whole_segment_decodes_to_every_batch() {
        let s = schema();
        let (bytes, _) = segment(&s, 4);
        let decoded = decode_segment(&bytes, &s);
        assert_eq!(decoded.stop, None);
        assert_eq!(decoded.rows(), 12);
        assert_eq!(decoded.batches[3], batch(&s, 9, 3));
    }

    /// Row frames among batch frames: with a decoder each becomes its batch in order; a
    /// payload the decoder refuses, or a decoder that panics, is one skipped frame; without a
    /// decoder every row frame is skipped and the batch frames still decode.
    #[test]
    fn row_frames_decode_through_the_reader_given_a_decoder() {
        let s = schema();
        let (mut bytes, _) = segment(&s, 1);
        // A row frame here holds "from,rows" as text; the decoder builds the batch.
        let row_frame = |text: &str, out: &mut Vec<u8>| {
            let payload = [&ROW_TAG[..], text.as_bytes()].concat();
            push_frame(&payload, out).unwrap();
        };
        row_frame("10,2", &mut bytes);
        row_frame("junk", &mut bytes);
        row_frame("panic", &mut bytes);
        row_frame("20,1", &mut bytes);
        let (mut encoder, _) = SegmentEncoder::new(&s).unwrap();
        encoder.encode(&batch(&s, 30, 3), &mut bytes).unwrap();
        let decoder = |payload: &[u8]| -> Result<RecordBatch, String> {
            let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
            assert_ne!(text, "panic", "a decoder that panics");
            let (from, rows) = text.split_once(',').ok_or("not rows")?;
            let parse = |v: &str| v.parse::<i32>().map_err(|e| e.to_string());
            Ok(batch(&s, parse(from)?, parse(rows)?))
        };
        let decoded = decode_segment_with(&bytes, &s, Some(&decoder));
        assert_eq!(decoded.stop, None);
        let firsts = ids(&decoded);
        assert_eq!(
            firsts,
            [
                "row-0", "row-1", "row-2", "row-10", "row-11", "row-20", "row-30", "row-31",
                "row-32"
            ]
        );
        assert_eq!(decoded.skipped.len(), 2, "{:?}", decoded.skipped);
        assert!(
            decoded
                .skipped
                .iter()
                .all(|stop| stop.reason == QuarantineReason::Malformed)
        );
        let without = decode_segment(&bytes, &s);
        assert_eq!(without.stop, None);
        assert_eq!(without.rows(), 6);
        assert_eq!(without.skipped.len(), 4);
    }

    #[test]
    fn empty_bytes_are_an_empty_segment() {
        let decoded = decode_segment(&[], &schema());
        assert!(decoded.batches.is_empty());
        assert_eq!(decoded.stop, None);
    }

    #[test]
    fn a_segment_with_only_its_schema_has_no_rows() {
        let s = schema();
        let (bytes, _) = segment(&s, 0);
        let decoded = decode_segment(&bytes, &s);
        assert_eq!((decoded.rows(), decoded.stop), (0, None));
    }

    #[test]
    fn a_truncated_frame_keeps_the_frames_before_it() {
        let s = schema();
        let (bytes, starts) = segment(&s, 3);
        // Cut inside the last payload, then inside the last header.
        for cut in [bytes.len() - 5, starts[2] + 7] {
            let decoded = decode_segment(&bytes[..cut], &s);
            assert_eq!(decoded.rows(), 6, "cut at {cut}");
            let stop = decoded.stop.unwrap();
            assert_eq!(stop.reason, QuarantineReason::Torn, "{stop:?}");
            assert_eq!(stop.offset, starts[2] as u64);
        }
        // Cut inside the first header: nothing, torn at 0.
        let decoded = decode_segment(&bytes[..3], &s);
        assert_eq!(decoded.stop.unwrap().reason, QuarantineReason::Torn);
    }

    #[test]
    fn a_flipped_byte_anywhere_is_noticed_at_its_frame() {
        let s = schema();
        let (bytes, starts) = segment(&s, 3);
        let mut frame_starts = vec![0];
        frame_starts.extend(&starts);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x20;
            let decoded = decode_segment(&damaged, &s);
            let frame = frame_starts.iter().rposition(|&f| f <= at).unwrap();
            let in_payload = frame > 0 && at >= frame_starts[frame] + HEADER_LEN;
            if in_payload {
                // A batch frame whose header is sound: skipped, the frames around it kept.
                assert!(decoded.stop.is_none(), "byte {at}: {:?}", decoded.stop);
                assert_eq!(decoded.skipped.len(), 1, "byte {at}");
                let skipped = &decoded.skipped[0];
                assert_eq!(skipped.offset, frame_starts[frame] as u64, "byte {at}");
                assert_eq!(skipped.reason, QuarantineReason::Checksum, "byte {at}");
                assert_eq!(decoded.rows(), 6, "byte {at}");
            } else {
                // The schema frame, or a frame header: nothing after it can be trusted.
                let stop = decoded
                    .stop
                    .clone()
                    .unwrap_or_else(|| panic!("byte {at} flipped and nothing noticed"));
                assert_eq!(
                    stop.offset, frame_starts[frame] as u64,
                    "byte {at}: {stop:?}"
                );
                assert_eq!(decoded.rows(), frame.saturating_sub(1) * 3, "byte {at}");
                assert_ne!(
                    stop.reason,
                    QuarantineReason::Malformed,
                    "byte {at}: {stop:?}"
                );
            }
        }
    }

    #[test]
    fn a_bad_length_is_a_checksum_failure_not_a_torn_write() {
        let s = schema();
        let (bytes, starts) = segment(&s, 3);
        for len in [0u32, 1, 17, u32::MAX] {
            let mut damaged = bytes.clone();
            damaged[starts[1] + 4..starts[1] + 8].copy_from_slice(&len.to_le_bytes());
            let decoded = decode_segment(&damaged, &s);
            let stop = decoded.stop.clone().unwrap();
            assert_eq!(stop.reason, QuarantineReason::Checksum, "{len}: {stop:?}");
            assert_eq!(stop.offset, starts[1] as u64);
            assert_eq!(ids(&decoded), ["row-0", "row-1", "row-2"]);
        }
    }

    #[test]
    fn a_checksummed_frame_that_is_not_a_batch_is_malformed() {
        let s = schema();
        let (mut bytes, starts) = segment(&s, 1);
        for payload in [
            &b"not arrow"[..],
            &[0xff, 0xff, 0xff, 0xff, 8, 0, 0, 0, 1, 2][..],
            &[],
        ] {
            push_frame(payload, &mut bytes).unwrap();
        }
        // A good batch after them is still read.
        let (mut encoder, _) = SegmentEncoder::new(&s).unwrap();
        encoder.encode(&batch(&s, 3, 3), &mut bytes).unwrap();
        let decoded = decode_segment(&bytes, &s);
        assert_eq!(
            ids(&decoded),
            ["row-0", "row-1", "row-2", "row-3", "row-4", "row-5"]
        );
        assert!(decoded.stop.is_none(), "{:?}", decoded.stop);
        assert_eq!(decoded.skipped.len(), 3, "{:?}", decoded.skipped);
        for skipped in &decoded.skipped {
            assert_eq!(skipped.reason, QuarantineReason::Malformed, "{skipped:?}");
            assert!(skipped.offset > starts[0] as u64);
        }
    }

    #[test]
    fn garbage_is_refused_at_offset_zero() {
        for bytes in [&b"hello, world: not a segment"[..], &[0u8; 64][..], b"SWF1"] {
            let decoded = decode_segment(bytes, &schema());
            let stop = decoded.stop.unwrap();
            assert_eq!(stop.offset, 0);
            assert!(decoded.batches.is_empty());
        }
    }

    fn legacy(schema: &SchemaRef, batches: i32) -> Vec<u8> {
        let mut w = StreamWriter::try_new(Vec::new(), schema).unwrap();
        for b in 0..batches {
            w.write(&batch(schema, b * 3, 3)).unwrap();
        }
        w.into_inner().unwrap()
    }

    #[test]
    fn a_legacy_arrow_stream_is_still_read() {
        let s = schema();
        let bytes = legacy(&s, 3);
        let decoded = decode_segment(&bytes, &s);
        assert_eq!(decoded.stop, None);
        assert_eq!(decoded.rows(), 9);
        // Cut short (a crash): the complete batches before the cut, torn at the last one.
        let whole = legacy(&s, 2).len() - 8; // without the end-of-stream marker
        let decoded = decode_segment(&bytes[..bytes.len() - 20], &s);
        assert_eq!(decoded.rows(), 6);
        let stop = decoded.stop.unwrap();
        assert_eq!(stop.reason, QuarantineReason::Torn, "{stop:?}");
        assert_eq!(stop.offset, whole as u64);
    }

    #[test]
    fn a_missing_nullable_column_is_filled_a_missing_required_one_is_refused() {
        let s = schema();
        let old = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int32, false),
            Field::new("gone", DataType::Int32, false),
        ]));
        let (mut encoder, mut bytes) = SegmentEncoder::new(&old).unwrap();
        let b = RecordBatch::try_new(
            Arc::clone(&old),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(Int32Array::from(vec![7, 8])),
            ],
        )
        .unwrap();
        encoder.encode(&b, &mut bytes).unwrap();
        let decoded = decode_segment(&bytes, &s);
        assert_eq!(decoded.stop, None);
        assert_eq!(decoded.batches[0].schema(), s);
        assert_eq!(decoded.batches[0].column(2).null_count(), 2);

        let without_n = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let (mut encoder, mut bytes) = SegmentEncoder::new(&without_n).unwrap();
        let b = RecordBatch::try_new(
            Arc::clone(&without_n),
            vec![Arc::new(StringArray::from(vec!["a"]))],
        )
        .unwrap();
        encoder.encode(&b, &mut bytes).unwrap();
        let decoded = decode_segment(&bytes, &s);
        let stop = decoded.stop.unwrap();
        assert_eq!(stop.reason, QuarantineReason::Schema);
        assert_eq!(stop.offset, 0);
        assert!(stop.detail.contains("`n`"), "{}", stop.detail);
    }

    /// Mutates `batch`'s IPC message, frames it with correct CRCs, and decodes it `n` times:
    /// the decoder must stop cleanly at the mutated frame or decode it. (Run with
    /// `--nocapture`: a panic contained by `catch_unwind` still prints; the checks before
    /// decoding left none in 2 × 30,000 mutations.)
    fn mutate(s: &SchemaRef, batch: &RecordBatch, n: usize) {
        let (_, schema_frame) = SegmentEncoder::new(s).unwrap();
        let mut ipc = StreamWriter::try_new(Vec::new(), s).unwrap();
        ipc.get_mut().clear();
        ipc.write(batch).unwrap();
        let payload = ipc.get_ref().clone();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..n {
            let mut mutated = payload.clone();
            for _ in 0..1 + (x % 4) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % mutated.len() as u64) as usize;
                mutated[at] = (x >> 24) as u8;
            }
            let mut bytes = schema_frame.clone();
            push_frame(&mutated, &mut bytes).unwrap();
            let decoded = decode_segment(&bytes, s);
            assert!(decoded.rows() <= 8 * mutated.len());
            if let Some(stop) = decoded.stop {
                assert_eq!(stop.offset, schema_frame.len() as u64);
                assert!(decoded.batches.is_empty());
            }
        }
    }

    #[test]
    fn mutated_payloads_with_valid_checksums_never_escape() {
        // The checksum stops random damage; this feeds the Arrow IPC decoder itself with
        // mutated batch messages, as a deliberate writer could.
        let s = schema();
        mutate(&s, &batch(&s, 0, 5), 3000);
        let p = crate::log::schema::prediction_schema();
        let mut record = crate::log::PredictionRecord {
            request_id: "r".into(),
            model_version: Arc::from("v"),
            predicted_label: Arc::from("3"),
            ts_us: 1,
            endpoint: crate::log::Endpoint::Classify,
            predicted_class: 3,
            confidence: 0.9,
            margin: 0.8,
            entropy: 0.1,
            probabilities: vec![0.1; 10],
            embedding: Some(vec![0.5; 8]),
            latency_us: 1,
            inference_us: 1,
            batch_size: 1,
            content_type: None,
            image: None,
            flags: vec!["candidate"],
            prediction_set: Some(vec![3, 5]),
        };
        let first = record.clone();
        record.embedding = None;
        let rows = crate::log::schema::prediction_batch(&[&first, &record]).unwrap();
        mutate(&p, &rows, 3000);
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic sweep (the fuzz target does the real search).
        let s = schema();
        let (framed, _) = segment(&s, 2);
        let legacy = legacy(&s, 2);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..4000 {
            // Legacy streams have no checksum: the decoder meets their damage directly.
            let bytes = if i % 2 == 0 { &framed } else { &legacy };
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut damaged = bytes.clone();
            let at = (x % damaged.len() as u64) as usize;
            damaged[at] = (x >> 32) as u8;
            damaged.truncate(((x >> 40) as usize % (bytes.len() + 1)).max(at + 1));
            let _ = decode_segment(&damaged, &s);
        }
    }
}
