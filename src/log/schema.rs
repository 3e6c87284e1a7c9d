//! The Arrow schemas of the prediction and feedback logs (the DESIGN.md contract) and the
//! conversion of records into record batches. The one place the columns are declared.

use std::sync::Arc;

use arrow_array::builder::{
    Float32Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{FeedbackRecord, PredictionRecord};

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn list_item(data_type: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", data_type, false))
}

/// Columns of a prediction row. Partition keys (model, date, hour) live in the path only.
/// Built once: every batch of the log shares it.
pub fn prediction_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(build_prediction_schema))
}

fn build_prediction_schema() -> SchemaRef {
    let f32_list = DataType::List(list_item(DataType::Float32));
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("ts", timestamp(), false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("predicted_class", DataType::Int32, false),
        Field::new("predicted_label", DataType::Utf8, false),
        Field::new("confidence", DataType::Float32, false),
        Field::new("margin", DataType::Float32, false),
        Field::new("entropy", DataType::Float32, false),
        Field::new("probabilities", f32_list.clone(), false),
        Field::new("embedding", f32_list, true),
        Field::new("latency_us", DataType::Int64, false),
        Field::new("inference_us", DataType::Int64, false),
        Field::new("batch_size", DataType::Int32, false),
        Field::new("content_type", DataType::Utf8, true),
        Field::new("image_bytes", DataType::Int64, true),
        Field::new("image_width", DataType::Int32, true),
        Field::new("image_height", DataType::Int32, true),
        Field::new("image_sha256", DataType::Utf8, true),
        Field::new("image_dhash", DataType::UInt64, true),
        Field::new("brightness", DataType::Float32, true),
        Field::new("contrast", DataType::Float32, true),
        Field::new("sharpness", DataType::Float32, true),
        Field::new("saturation", DataType::Float32, true),
        Field::new("flags", DataType::List(list_item(DataType::Utf8)), false),
        Field::new(
            "prediction_set",
            DataType::List(list_item(DataType::Int32)),
            true,
        ),
    ]))
}

/// Columns of a delayed-label row.
pub fn feedback_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("ts", timestamp(), false),
        Field::new("label", DataType::Utf8, false),
        Field::new("class", DataType::Int32, false),
        Field::new("source", DataType::Utf8, false),
    ]))
}

fn f32_list_builder(capacity: usize) -> ListBuilder<Float32Builder> {
    ListBuilder::with_capacity(Float32Builder::new(), capacity)
        .with_field(list_item(DataType::Float32))
}

/// Prediction rows as one record batch.
pub fn prediction_batch(rows: &[&PredictionRecord]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let mut request_id = StringBuilder::with_capacity(n, n * 36);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut version = StringBuilder::with_capacity(n, n * 12);
    let mut endpoint = StringBuilder::with_capacity(n, n * 8);
    let mut class = Int32Builder::with_capacity(n);
    let mut label = StringBuilder::with_capacity(n, n * 4);
    let mut confidence = Float32Builder::with_capacity(n);
    let mut margin = Float32Builder::with_capacity(n);
    let mut entropy = Float32Builder::with_capacity(n);
    let mut probabilities = f32_list_builder(n);
    let mut embedding = f32_list_builder(n);
    let mut latency = Int64Builder::with_capacity(n);
    let mut inference = Int64Builder::with_capacity(n);
    let mut batch_size = Int32Builder::with_capacity(n);
    let mut content_type = StringBuilder::with_capacity(n, n * 9);
    let mut image_bytes = Int64Builder::with_capacity(n);
    let mut width = Int32Builder::with_capacity(n);
    let mut height = Int32Builder::with_capacity(n);
    let mut sha = StringBuilder::with_capacity(n, n * 64);
    let mut dhash = UInt64Builder::with_capacity(n);
    let mut brightness = Float32Builder::with_capacity(n);
    let mut contrast = Float32Builder::with_capacity(n);
    let mut sharpness = Float32Builder::with_capacity(n);
    let mut saturation = Float32Builder::with_capacity(n);
    let mut flags =
        ListBuilder::with_capacity(StringBuilder::new(), n).with_field(list_item(DataType::Utf8));
    let mut prediction_set =
        ListBuilder::with_capacity(Int32Builder::new(), n).with_field(list_item(DataType::Int32));

    for r in rows {
        request_id.append_value(&r.request_id);
        ts.append_value(r.ts_us);
        version.append_value(&*r.model_version);
        endpoint.append_value(r.endpoint.as_str());
        class.append_value(r.predicted_class as i32);
        label.append_value(&*r.predicted_label);
        confidence.append_value(r.confidence);
        margin.append_value(r.margin);
        entropy.append_value(r.entropy);
        probabilities.values().append_slice(&r.probabilities);
        probabilities.append(true);
        match &r.embedding {
            Some(e) => {
                embedding.values().append_slice(e);
                embedding.append(true);
            }
            None => embedding.append(false),
        }
        latency.append_value(r.latency_us);
        inference.append_value(r.inference_us);
        batch_size.append_value(r.batch_size);
        content_type.append_option(r.content_type.as_deref());
        let image = r.image.as_ref();
        image_bytes.append_option(image.map(|i| i.bytes));
        width.append_option(image.map(|i| i.stats.width as i32));
        height.append_option(image.map(|i| i.stats.height as i32));
        sha.append_option(image.map(|i| i.sha256.as_str()));
        dhash.append_option(image.map(|i| i.dhash));
        brightness.append_option(image.map(|i| i.stats.brightness));
        contrast.append_option(image.map(|i| i.stats.contrast));
        sharpness.append_option(image.map(|i| i.stats.sharpness));
        saturation.append_option(image.map(|i| i.stats.saturation));
        for flag in &r.flags {
            flags.values().append_value(flag);
        }
        flags.append(true);
        match &r.prediction_set {
            Some(set) => {
                prediction_set.values().append_slice(set);
                prediction_set.append(true);
            }
            None => prediction_set.append(false),
        }
    }

    let columns: Vec<ArrayRef> = vec![
        Arc::new(request_id.finish()),
        Arc::new(ts.finish()),
        Arc::new(version.finish()),
        Arc::new(endpoint.finish()),
        Arc::new(class.finish()),
        Arc::new(label.finish()),
        Arc::new(confidence.finish()),
        Arc::new(margin.finish()),
        Arc::new(entropy.finish()),
        Arc::new(probabilities.finish()),
        Arc::new(embedding.finish()),
        Arc::new(latency.finish()),
        Arc::new(inference.finish()),
        Arc::new(batch_size.finish()),
        Arc::new(content_type.finish()),
        Arc::new(image_bytes.finish()),
        Arc::new(width.finish()),
        Arc::new(height.finish()),
        Arc::new(sha.finish()),
        Arc::new(dhash.finish()),
        Arc::new(brightness.finish()),
        Arc::new(contrast.finish()),
        Arc::new(sharpness.finish()),
        Arc::new(saturation.finish()),
        Arc::new(flags.finish()),
        Arc::new(prediction_set.finish()),
    ];
    RecordBatch::try_new(prediction_schema(), columns)
}

/// Feedback rows as one record batch.
pub fn feedback_batch(rows: &[&FeedbackRecord]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let mut request_id = StringBuilder::with_capacity(n, n * 36);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut label = StringBuilder::with_capacity(n, n * 4);
    let mut class = Int32Builder::with_capacity(n);
    let mut source = StringBuilder::with_capacity(n, n * 4);
    for r in rows {
        request_id.append_value(&r.request_id);
        ts.append_value(r.ts_us);
        label.append_value(&r.label);
        class.append_value(r.class as i32);
        source.append_value(&r.source);
    }
    RecordBatch::try_new(
        feedback_schema(),
        vec![
            Arc::new(request_id.finish()),
            Arc::new(ts.finish()),
            Arc::new(label.finish()),
            Arc::new(class.finish()),
            Arc::new(source.finish()),
        ],
    )
}
