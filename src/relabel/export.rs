//! Writing chosen candidates as a package a labeling tool imports: the images, Label Studio's
//! `tasks.json` with the model's predictions as pre-annotations, a labeling config
//! (`label-studio.xml`) and `manifest.csv` for everything else.
//!
//! A package is either complete or absent: it is written into a hidden sibling directory and
//! renamed into place at the end. Nothing is ever written outside the export root: the package
//! name is a single plain path component, the root is canonicalized, and every path written is
//! checked to lie under it. Everything is validated before the first byte is written.
//!
//! Each task's `data.image` is `[candidates] image_url_prefix` followed by the image's path
//! relative to the export root (`<package>/images/<file>`): with the default prefix
//! (`/data/local-files/?d=`) a Label Studio serving local files from the export root, with a
//! Local Files storage on the package folder, shows every image as it is imported; with a
//! bucket prefix (`s3://bucket/prefix/`) the package is uploaded under that prefix and Label
//! Studio's cloud storage signs the URLs.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::select::Reason;

/// The longest package name accepted.
pub const MAX_NAME_CHARS: usize = 64;

/// The labeling config's names: the `Choices` control and the `Image` object it labels.
const CHOICES_NAME: &str = "label";
const IMAGE_NAME: &str = "image";

/// The columns of `manifest.csv`.
const MANIFEST_HEADER: &str =
    "request_id,sha256,score,reasons,predicted_label,confidence,margin,entropy,model_version";

/// One chosen candidate with what its task needs.
#[derive(Clone, Debug)]
pub struct ExportItem {
    pub request_id: String,
    /// The image bytes as received.
    pub image: Vec<u8>,
    /// The request's `Content-Type`, if any (used when the bytes' format is not recognised).
    pub content_type: Option<String>,
    /// Hex SHA-256 of `image` (checked; upper or lower case).
    pub sha256: String,
    /// The selection score (`select::score`).
    pub score: f64,
    /// Why it was chosen (`select::reasons`).
    pub reasons: Vec<Reason>,
    pub predicted_class: usize,
    /// The predicted class's label: must be one of the package's labels.
    pub predicted_label: String,
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
    pub model_version: String,
    /// The label of the nearest labeled neighbour, when it lies within the propagation
    /// distance: a second pre-annotation.
    pub propagated: Option<Propagated>,
}

/// A label carried over from the nearest labeled neighbour.
#[derive(Clone, Debug, PartialEq)]
pub struct Propagated {
    /// The neighbour's request id.
    pub request_id: String,
    /// Its delayed label: must be one of the package's labels.
    pub label: String,
    /// The distance between the two embeddings.
    pub distance: f64,
}

/// Why a package was not written. Nothing is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The package name is not one plain, visible path component of at most 64 characters.
    #[error("invalid package name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The export root is missing, unreadable or not a directory.
    #[error("export directory {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    /// Something already has the package's path.
    #[error("package {path} already exists: choose another name or remove it")]
    Exists { path: PathBuf },
    /// The image URL prefix cannot start a URL.
    #[error("image URL prefix {prefix:?} holds whitespace or a control character")]
    InvalidImageUrlPrefix { prefix: String },
    /// The class labels cannot make a labeling config.
    #[error("class labels: {reason}")]
    InvalidLabels { reason: String },
    /// A candidate cannot be exported as it is.
    #[error("candidate {request_id:?}: {reason}")]
    InvalidItem { request_id: String, reason: String },
    /// A path to be written does not lie under the export root (never expected: a guard).
    #[error("refusing to write {path}: it is not inside the export directory {root}")]
    OutsideRoot { path: PathBuf, root: PathBuf },
    /// Writing failed; the partial package was removed.
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Creates `root/<name>/` and writes the package into it; returns its path (under the
/// canonicalized root).
///
/// `name`: 1 to 64 characters of `[A-Za-z0-9._-]`, not starting with `.`; the directory must
/// not exist yet, and `root` must. The package holds:
/// - `images/<sha256>.<ext>`, each distinct image once; the extension from the bytes' magic
///   number (png, jpg, webp, gif, bmp, tif), else from the content type, else `bin`;
/// - `tasks.json`: Label Studio's import format, one task per item, in order:
///   `{"data": {"image": "<image_url_prefix><name>/images/<file>", "request_id", "score", "reasons" (joined by ';'),
///   "model_version"}, "predictions": [{"model_version", "score": <confidence>, "result":
///   [{"from_name": "label", "to_name": "image", "type": "choices",
///   "value": {"choices": [<predicted_label>]}}]}]}`, and for an item with a propagated label a
///   second prediction `{"model_version": "propagated:<neighbour's request_id>", "score":
///   <distance>, "result": [... "choices": [<neighbour's label>] ...]}`;
/// - `label-studio.xml`: the labeling config, one `<Choice>` per label;
/// - `manifest.csv`: `request_id,sha256,score,reasons,predicted_label,confidence,margin,entropy,model_version`,
///   one row per item (RFC 4180 quoting, reasons joined by ';').
///
/// Refused before anything is written: a bad name; an image URL prefix holding a control
/// character or whitespace; no labels, an empty, repeated or
/// control-character label; an item with an empty, repeated or control-character request id, a
/// SHA-256 that is not the image's, a non-finite number, or a predicted label not among `labels`.
pub fn write_package(
    root: &Path,
    name: &str,
    items: &[ExportItem],
    labels: &[String],
    image_url_prefix: &str,
) -> Result<PathBuf, ExportError> {
    check_name(name)?;
    check_image_url_prefix(image_url_prefix)?;
    check_labels(labels)?;
    let plan = plan(items, labels)?;
    let root = fs::canonicalize(root).map_err(|source| ExportError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    if !root.is_dir() {
        return Err(ExportError::Root {
            path: root,
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let target = inside(&root, root.join(name))?;
    if fs::symlink_metadata(&target).is_ok() {
        return Err(ExportError::Exists { path: target });
    }
    let staging = inside(&root, root.join(staging_name(name)))?;
    fs::create_dir(&staging).map_err(io_at(&staging))?;
    let image_urls: Vec<String> = plan
        .files
        .iter()
        .map(|file| format!("{image_url_prefix}{name}/images/{file}"))
        .collect();
    let written =
        write_contents(&root, &staging, items, labels, &plan, &image_urls).and_then(|()| {
            // Checked again just before the rename: renaming onto an empty directory would
            // silently replace it.
            if fs::symlink_metadata(&target).is_ok() {
                return Err(ExportError::Exists {
                    path: target.clone(),
                });
            }
            fs::rename(&staging, &target).map_err(io_at(&target))
        });
    if let Err(e) = written {
        // Best effort: the error being reported matters more than a failed clean-up.
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    sync_dir(&root)?;
    Ok(target)
}

/// Where each item's image goes: `files[i]` is item i's file name under `images/`, `unique`
/// the items whose bytes are written (the first of each SHA-256).
struct Plan {
    files: Vec<String>,
    unique: Vec<usize>,
}

fn check_name(name: &str) -> Result<(), ExportError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.chars().count() > MAX_NAME_CHARS {
        Some("it is longer than 64 characters")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Some("use only letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ExportError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Control characters cannot appear in an XML 1.0 document, even escaped, and have no place in
/// a label or an id.
fn has_control(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}'))
}

/// A URL prefix goes into JSON as it is: no control characters, no whitespace (Label Studio
/// would not resolve it).
pub fn check_image_url_prefix(prefix: &str) -> Result<(), ExportError> {
    if has_control(prefix) || prefix.chars().any(char::is_whitespace) {
        return Err(ExportError::InvalidImageUrlPrefix {
            prefix: prefix.to_string(),
        });
    }
    Ok(())
}

fn check_labels(labels: &[String]) -> Result<(), ExportError> {
    let invalid = |reason: String| Err(ExportError::InvalidLabels { reason });
    if labels.is_empty() {
        return invalid("there are none: the labeling config needs at least one choice".into());
    }
    let mut seen = HashSet::new();
    for (class, label) in labels.iter().enumerate() {
        if label.is_empty() {
            return invalid(format!("the label of class {class} is empty"));
        }
        if has_control(label) {
            return invalid(format!(
                "the label of class {class} ({label:?}) holds a control character"
            ));
        }
        if !seen.insert(label.as_str()) {
            return invalid(format!("{label:?} is given to more than one class"));
        }
    }
    Ok(())
}

fn plan(items: &[ExportItem], labels: &[String]) -> Result<Plan, ExportError> {
    let labels: HashSet<&str> = labels.iter().map(String::as_str).collect();
    let mut ids = HashSet::new();
    let mut by_sha: HashMap<String, String> = HashMap::new();
    let mut plan = Plan {
        files: Vec::with_capacity(items.len()),
        unique: Vec::new(),
    };
    for (i, item) in items.iter().enumerate() {
        let invalid = |reason: String| ExportError::InvalidItem {
            request_id: item.request_id.clone(),
            reason,
        };
        if item.request_id.is_empty() {
            return Err(invalid("the request id is empty".into()));
        }
        if has_control(&item.request_id) {
            return Err(invalid("the request id holds a control character".into()));
        }
        if !ids.insert(item.request_id.as_str()) {
            return Err(invalid("the request id appears more than once".into()));
        }
        let sha = item.sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "sha256 {:?} is not 64 hex digits",
                item.sha256
            )));
        }
        if hex::encode(Sha256::digest(&item.image)) != sha {
            return Err(invalid(format!(
                "sha256 {sha} is not the hash of its image bytes"
            )));
        }
        let numbers = [
            ("score", item.score),
            ("confidence", f64::from(item.confidence)),
            ("margin", f64::from(item.margin)),
            ("entropy", f64::from(item.entropy)),
        ];
        if let Some((field, value)) = numbers.iter().find(|(_, v)| !v.is_finite()) {
            return Err(invalid(format!("{field} is {value}, not a finite number")));
        }
        if let Some(p) = &item.propagated {
            if !labels.contains(p.label.as_str()) {
                return Err(invalid(format!(
                    "propagated label {:?} is not one of the {} class labels",
                    p.label,
                    labels.len()
                )));
            }
            if !(p.distance.is_finite() && p.distance >= 0.0) || has_control(&p.request_id) {
                return Err(invalid(
                    "a propagated label needs a finite distance and a plain request id".into(),
                ));
            }
        }
        if !labels.contains(item.predicted_label.as_str()) {
            return Err(invalid(format!(
                "predicted label {:?} is not one of the {} class labels",
                item.predicted_label,
                labels.len()
            )));
        }
        let file = by_sha.entry(sha).or_insert_with_key(|sha| {
            plan.unique.push(i);
            format!(
                "{sha}.{}",
                extension(item.content_type.as_deref(), &item.image)
            )
        });
        plan.files.push(file.clone());
    }
    Ok(plan)
}

/// The file extension for an image: from its magic number (what the sidecar decoded it as),
/// else from its content type (parameters and case ignored), else `bin`.
fn extension(content_type: Option<&str>, bytes: &[u8]) -> &'static str {
    let sniffed = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else if bytes.starts_with(b"BM") {
        Some("bmp")
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Some("tif")
    } else {
        None
    };
    sniffed.unwrap_or_else(|| {
        let essence = content_type
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default();
        match essence.trim().to_ascii_lowercase().as_str() {
            "image/png" => "png",
            "image/jpeg" | "image/jpg" | "image/pjpeg" => "jpg",
            "image/webp" => "webp",
            "image/gif" => "gif",
            "image/bmp" | "image/x-bmp" | "image/x-ms-bmp" => "bmp",
            "image/tiff" | "image/tiff-fx" => "tif",
            _ => "bin",
        }
    })
}

/// A hidden sibling for the package being written, unique within the process and across
/// processes; hidden names are never valid package names, so it cannot collide with one.
fn staging_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.partial-{}-{n}", std::process::id())
}

/// `path` itself when it lies under `root` through plain components only.
fn inside(root: &Path, path: PathBuf) -> Result<PathBuf, ExportError> {
    let plain = path.strip_prefix(root).is_ok_and(|rest| {
        rest.components().count() > 0
            && rest.components().all(|c| matches!(c, Component::Normal(_)))
    });
    if plain {
        Ok(path)
    } else {
        Err(ExportError::OutsideRoot {
            path,
            root: root.to_path_buf(),
        })
    }
}

/// Reasons as the package writes them: their names joined by `;`.
fn join_reasons(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(";")
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new file (never an existing one, never through a link) and flushes it to disk.
fn write_new(root: &Path, path: PathBuf, bytes: &[u8]) -> Result<(), ExportError> {
    let path = inside(root, path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_at(&path))?;
    file.write_all(bytes).map_err(io_at(&path))?;
    file.sync_all().map_err(io_at(&path))
}

/// Flushes a directory's entries to disk (a no-op where directories cannot be opened).
fn sync_dir(dir: &Path) -> Result<(), ExportError> {
    match File::open(dir) {
        Ok(d) => d.sync_all().map_err(io_at(dir)),
        Err(_) => Ok(()),
    }
}

fn write_contents(
    root: &Path,
    staging: &Path,
    items: &[ExportItem],
    labels: &[String],
    plan: &Plan,
    image_urls: &[String],
) -> Result<(), ExportError> {
    // The staging directory was just created by us; make sure it is where we think it is.
    let real = fs::canonicalize(staging).map_err(io_at(staging))?;
    inside(root, real)?;
    let images = inside(root, staging.join("images"))?;
    fs::create_dir(&images).map_err(io_at(&images))?;
    for &i in &plan.unique {
        write_new(root, images.join(&plan.files[i]), &items[i].image)?;
    }
    sync_dir(&images)?;
    write_new(
        root,
        staging.join("tasks.json"),
        &tasks_json(items, image_urls),
    )?;
    write_new(
        root,
        staging.join("label-studio.xml"),
        labeling_config(labels).as_bytes(),
    )?;
    write_new(
        root,
        staging.join("manifest.csv"),
        manifest(items).as_bytes(),
    )?;
    sync_dir(staging)
}

#[derive(Serialize)]
struct Task<'a> {
    data: TaskData<'a>,
    predictions: Vec<Prediction<'a>>,
}

#[derive(Serialize)]
struct TaskData<'a> {
    image: String,
    request_id: &'a str,
    score: f64,
    reasons: String,
    model_version: &'a str,
}

#[derive(Serialize)]
struct Prediction<'a> {
    model_version: std::borrow::Cow<'a, str>,
    score: f64,
    result: [ChoiceResult<'a>; 1],
}

fn choice(label: &str) -> [ChoiceResult<'_>; 1] {
    [ChoiceResult {
        from_name: CHOICES_NAME,
        to_name: IMAGE_NAME,
        kind: "choices",
        value: ChoiceValue { choices: [label] },
    }]
}

#[derive(Serialize)]
struct ChoiceResult<'a> {
    from_name: &'static str,
    to_name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    value: ChoiceValue<'a>,
}

#[derive(Serialize)]
struct ChoiceValue<'a> {
    choices: [&'a str; 1],
}

fn tasks_json(items: &[ExportItem], image_urls: &[String]) -> Vec<u8> {
    let tasks: Vec<Task<'_>> = items
        .iter()
        .zip(image_urls)
        .map(|(item, url)| Task {
            data: TaskData {
                image: url.clone(),
                request_id: &item.request_id,
                score: item.score,
                reasons: join_reasons(&item.reasons),
                model_version: &item.model_version,
            },
            predictions: std::iter::once(Prediction {
                model_version: item.model_version.as_str().into(),
                score: f64::from(item.confidence),
                result: choice(&item.predicted_label),
            })
            .chain(item.propagated.iter().map(|p| Prediction {
                model_version: format!("propagated:{}", p.request_id).into(),
                score: p.distance,
                result: choice(&p.label),
            }))
            .collect(),
        })
        .collect();
    // Plain structs of strings and finite numbers: serialising them cannot fail.
    let mut json = serde_json::to_vec_pretty(&tasks).unwrap_or_default();
    json.push(b'\n');
    json
}

/// Escapes text for an XML attribute value.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn labeling_config(labels: &[String]) -> String {
    let mut xml = String::from("<View>\n");
    xml.push_str(&format!(
        "  <Image name=\"{IMAGE_NAME}\" value=\"$image\"/>\n"
    ));
    xml.push_str(&format!(
        "  <Choices name=\"{CHOICES_NAME}\" toName=\"{IMAGE_NAME}\" choice=\"single\" showInLine=\"true\">\n"
    ));
    for label in labels {
        xml.push_str(&format!("    <Choice value=\"{}\"/>\n", xml_escape(label)));
    }
    xml.push_str("  </Choices>\n</View>\n");
    xml
}

/// Quotes a CSV field when it holds a separator, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn manifest(items: &[ExportItem]) -> String {
    let mut csv = format!("{MANIFEST_HEADER}\n");
    for item in items {
        let row = [
            csv_field(&item.request_id),
            item.sha256.to_ascii_lowercase(),
            item.score.to_string(),
            csv_field(&join_reasons(&item.reasons)),
            csv_field(&item.predicted_label),
            item.confidence.to_string(),
            item.margin.to_string(),
            item.entropy.to_string(),
            csv_field(&item.model_version),
        ];
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label Studio's local-files prefix, the default `image_url_prefix`.
    const LOCAL_FILES: &str = "/data/local-files/?d=";
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n not really a png";
    const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0 not really a jpeg";

    fn labels() -> Vec<String> {
        ["cat", "dog & \"wolf\"", "<bird>", "it's"]
            .map(String::from)
            .to_vec()
    }

    fn item(id: &str, image: &[u8], label: &str) -> ExportItem {
        ExportItem {
            request_id: id.to_string(),
            image: image.to_vec(),
            content_type: None,
            sha256: hex::encode(Sha256::digest(image)),
            score: 0.75,
            reasons: vec![Reason::Uncertain, Reason::OodSuspect],
            predicted_class: 0,
            predicted_label: label.to_string(),
            confidence: 0.5,
            margin: 0.125,
            entropy: 1.25,
            model_version: "digits-3".to_string(),
            propagated: None,
        }
    }

    fn items() -> Vec<ExportItem> {
        let mut gif = item("req-gif", b"no magic here", "it's");
        gif.content_type = Some("Image/GIF; charset=binary".into());
        let mut unknown = item("req,\"odd\"", b"no magic either", "<bird>");
        unknown.reasons = vec![Reason::RandomSample];
        unknown.model_version = "v, \"2\"".into();
        vec![
            item("req-1", PNG, "cat"),
            // The same bytes again: one file, two tasks.
            item("req-2", PNG, "dog & \"wolf\""),
            item("req-3", JPEG, "cat"),
            gif,
            unknown,
        ]
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_every_file_of_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let items = items();
        let package = write_package(dir.path(), "batch-1", &items, &labels(), LOCAL_FILES).unwrap();
        assert_eq!(
            package,
            fs::canonicalize(dir.path()).unwrap().join("batch-1")
        );
        assert_eq!(
            entries(dir.path()),
            ["batch-1"],
            "no staging directory left"
        );
        assert_eq!(
            entries(&package),
            ["images", "label-studio.xml", "manifest.csv", "tasks.json"]
        );
        let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
        let mut expected_images = vec![
            format!("{}.png", sha(PNG)),
            format!("{}.jpg", sha(JPEG)),
            format!("{}.gif", sha(b"no magic here")),
            format!("{}.bin", sha(b"no magic either")),
        ];
        expected_images.sort();
        assert_eq!(entries(&package.join("images")), expected_images);
        assert_eq!(
            fs::read(package.join("images").join(format!("{}.png", sha(PNG)))).unwrap(),
            PNG
        );
    }

    #[test]
    fn tasks_have_label_studio_shape() {
        let dir = tempfile::tempdir().unwrap();
        let items = items();
        let package = write_package(dir.path(), "tasks", &items, &labels(), LOCAL_FILES).unwrap();
        let tasks: serde_json::Value =
            serde_json::from_slice(&fs::read(package.join("tasks.json")).unwrap()).unwrap();
        let png = format!(
            "{LOCAL_FILES}tasks/images/{}.png",
            hex::encode(Sha256::digest(PNG))
        );
        let second = serde_json::json!({
            "data": {
                "image": png,
                "request_id": "req-2",
                "score": 0.75,
                "reasons": "uncertain;ood_suspect",
                "model_version": "digits-3",
            },
            "predictions": [{
                "model_version": "digits-3",
                "score": 0.5,
                "result": [{
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["dog & \"wolf\""]},
                }],
            }],
        });
        let tasks = tasks.as_array().unwrap();
        assert_eq!(tasks.len(), items.len());
        assert_eq!(tasks[1], second);
        assert_eq!(tasks[0]["data"]["image"], png);
        for (task, item) in tasks.iter().zip(&items) {
            assert_eq!(task["data"]["request_id"], item.request_id.as_str());
            // The URL's path is relative to the export root (Label Studio's document root).
            let image = task["data"]["image"].as_str().unwrap();
            let relative = image.strip_prefix(LOCAL_FILES).unwrap();
            assert_eq!(fs::read(dir.path().join(relative)).unwrap(), item.image);
            assert_eq!(
                task["predictions"][0]["result"][0]["value"]["choices"][0],
                item.predicted_label.as_str()
            );
        }
    }

    #[test]
    fn a_propagated_label_is_a_second_prediction() {
        let dir = tempfile::tempdir().unwrap();
        let mut items = items();
        items[0].propagated = Some(Propagated {
            request_id: "labeled-7".into(),
            label: "<bird>".into(),
            distance: 1.5,
        });
        let package = write_package(dir.path(), "p", &items, &labels(), LOCAL_FILES).unwrap();
        let tasks: serde_json::Value =
            serde_json::from_slice(&fs::read(package.join("tasks.json")).unwrap()).unwrap();
        assert_eq!(
            tasks[0]["predictions"][1],
            serde_json::json!({
                "model_version": "propagated:labeled-7",
                "score": 1.5,
                "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                            "value": {"choices": ["<bird>"]}}],
            })
        );
        assert_eq!(tasks[1]["predictions"].as_array().unwrap().len(), 1);
        // A label that is not a class, or a distance that is not one, is refused.
        for (label, distance) in [("wolf", 1.0), ("cat", f64::NAN), ("cat", -1.0)] {
            items[0].propagated = Some(Propagated {
                request_id: "labeled-7".into(),
                label: label.into(),
                distance,
            });
            let err = write_package(dir.path(), "q", &items, &labels(), LOCAL_FILES).unwrap_err();
            assert!(matches!(err, ExportError::InvalidItem { .. }), "{err}");
        }
    }

    #[test]
    fn image_urls_take_the_configured_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = "s3://labels-bucket/shiftwatch/";
        let package = write_package(dir.path(), "batch-7", &items(), &labels(), bucket).unwrap();
        let tasks: serde_json::Value =
            serde_json::from_slice(&fs::read(package.join("tasks.json")).unwrap()).unwrap();
        let png = hex::encode(Sha256::digest(PNG));
        assert_eq!(
            tasks[1]["data"]["image"],
            format!("s3://labels-bucket/shiftwatch/batch-7/images/{png}.png")
        );
        // An empty prefix leaves the path relative to the export root.
        let package = write_package(dir.path(), "plain", &items(), &labels(), "").unwrap();
        let tasks: serde_json::Value =
            serde_json::from_slice(&fs::read(package.join("tasks.json")).unwrap()).unwrap();
        assert_eq!(tasks[1]["data"]["image"], format!("plain/images/{png}.png"));
        for bad in ["s3://a b/", "/data/\n", "x\u{7f}", "\t"] {
            let err = write_package(dir.path(), "refused", &items(), &labels(), bad).unwrap_err();
            assert!(
                matches!(err, ExportError::InvalidImageUrlPrefix { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(!dir.path().join("refused").exists());
    }

    #[test]
    fn the_labeling_config_lists_every_label_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let package = write_package(dir.path(), "xml", &items(), &labels(), LOCAL_FILES).unwrap();
        let xml = fs::read_to_string(package.join("label-studio.xml")).unwrap();
        let expected = "<View>\n  <Image name=\"image\" value=\"$image\"/>\n  \
            <Choices name=\"label\" toName=\"image\" choice=\"single\" showInLine=\"true\">\n    \
            <Choice value=\"cat\"/>\n    <Choice value=\"dog &amp; &quot;wolf&quot;\"/>\n    \
            <Choice value=\"&lt;bird&gt;\"/>\n    <Choice value=\"it&apos;s\"/>\n  </Choices>\n</View>\n";
        assert_eq!(xml, expected);
    }

    #[test]
    fn manifest_rows_match_the_items() {
        let dir = tempfile::tempdir().unwrap();
        let items = items();
        let package = write_package(dir.path(), "csv", &items, &labels(), LOCAL_FILES).unwrap();
        let csv = fs::read_to_string(package.join("manifest.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), items.len() + 1);
        assert_eq!(lines[0], MANIFEST_HEADER);
        let png = hex::encode(Sha256::digest(PNG));
        assert_eq!(
            lines[1],
            format!("req-1,{png},0.75,uncertain;ood_suspect,cat,0.5,0.125,1.25,digits-3")
        );
        assert_eq!(
            lines[2],
            format!(
                "req-2,{png},0.75,uncertain;ood_suspect,\"dog & \"\"wolf\"\"\",0.5,0.125,1.25,digits-3"
            )
        );
        let unknown = hex::encode(Sha256::digest(b"no magic either"));
        assert_eq!(
            lines[5],
            format!(
                "\"req,\"\"odd\"\"\",{unknown},0.75,random_sample,<bird>,0.5,0.125,1.25,\"v, \"\"2\"\"\""
            )
        );
    }

    #[test]
    fn identical_images_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut copies: Vec<ExportItem> = (0..5)
            .map(|i| item(&format!("copy-{i}"), PNG, "cat"))
            .collect();
        // Upper-case hex names the same image.
        copies[3].sha256 = copies[3].sha256.to_ascii_uppercase();
        let package = write_package(dir.path(), "copies", &copies, &labels(), LOCAL_FILES).unwrap();
        let png = format!("{}.png", hex::encode(Sha256::digest(PNG)));
        assert_eq!(entries(&package.join("images")), [png.as_str()]);
        let tasks: serde_json::Value =
            serde_json::from_slice(&fs::read(package.join("tasks.json")).unwrap()).unwrap();
        let images: Vec<&str> = tasks
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["data"]["image"].as_str().unwrap())
            .collect();
        assert_eq!(images, vec![format!("{LOCAL_FILES}copies/images/{png}"); 5]);
    }

    #[test]
    fn hostile_names_are_rejected_and_nothing_is_written() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("exports");
        fs::create_dir(&root).unwrap();
        let long = "a".repeat(200);
        let hostile = [
            "../x",
            "/etc",
            "a/b",
            "..",
            ".",
            ".hidden",
            "",
            long.as_str(),
            "a\\b",
            "a\0b",
            "x/../../y",
            "naïve",
            "a b",
            "~",
            "..\\x",
        ];
        for name in hostile {
            let err = write_package(&root, name, &items(), &labels(), LOCAL_FILES).unwrap_err();
            assert!(
                matches!(err, ExportError::InvalidName { .. }),
                "{name:?}: {err}"
            );
            assert!(err.to_string().starts_with("invalid package name"), "{err}");
        }
        assert_eq!(entries(outer.path()), ["exports"]);
        assert!(entries(&root).is_empty());
        // The longest valid name is fine.
        let longest = "b".repeat(MAX_NAME_CHARS);
        assert!(write_package(&root, &longest, &items(), &labels(), LOCAL_FILES).is_ok());
        assert_eq!(entries(&root), [longest]);
    }

    #[test]
    fn an_existing_package_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("taken");
        fs::create_dir(&existing).unwrap();
        fs::write(existing.join("keep.txt"), "mine").unwrap();
        let err = write_package(dir.path(), "taken", &items(), &labels(), LOCAL_FILES).unwrap_err();
        assert!(matches!(err, ExportError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(entries(&existing), ["keep.txt"]);
        assert_eq!(entries(dir.path()), ["taken"]);
        // An empty directory, or a link, counts as existing too.
        fs::create_dir(dir.path().join("empty")).unwrap();
        let err = write_package(dir.path(), "empty", &items(), &labels(), LOCAL_FILES).unwrap_err();
        assert!(matches!(err, ExportError::Exists { .. }), "{err}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&existing, dir.path().join("link")).unwrap();
            let err =
                write_package(dir.path(), "link", &items(), &labels(), LOCAL_FILES).unwrap_err();
            assert!(matches!(err, ExportError::Exists { .. }), "{err}");
            assert_eq!(entries(&existing), ["keep.txt"]);
        }
    }

    #[test]
    fn invalid_items_and_labels_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        type Breakage = fn(&mut ExportItem);
        let broken: [(&str, Breakage); 8] = [
            ("not 64 hex digits", |i| {
                i.sha256 = "../../etc/passwd".into()
            }),
            ("not the hash", |i| i.sha256 = "0".repeat(64)),
            ("not one of the 4 class labels", |i| {
                i.predicted_label = "horse".into()
            }),
            ("confidence is NaN", |i| i.confidence = f32::NAN),
            ("score is inf", |i| i.score = f64::INFINITY),
            ("request id is empty", |i| i.request_id.clear()),
            ("control character", |i| i.request_id = "a\nb".into()),
            ("more than once", |i| i.request_id = "req-1".into()),
        ];
        for (message, breaks) in broken {
            let mut items = items();
            breaks(&mut items[2]);
            let err = write_package(dir.path(), "p", &items, &labels(), LOCAL_FILES).unwrap_err();
            assert!(matches!(err, ExportError::InvalidItem { .. }), "{err}");
            assert!(err.to_string().contains(message), "{err} lacks {message:?}");
        }
        let bad_labels: [(&[&str], &str); 4] = [
            (&[], "there are none"),
            (&["cat", ""], "class 1 is empty"),
            (&["cat", "cat"], "more than one class"),
            (&["cat", "a\u{7}"], "control character"),
        ];
        for (bad, message) in bad_labels {
            let bad: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            let err = write_package(dir.path(), "p", &[], &bad, LOCAL_FILES).unwrap_err();
            assert!(matches!(err, ExportError::InvalidLabels { .. }), "{err}");
            assert!(err.to_string().contains(message), "{err} lacks {message:?}");
        }
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn a_missing_root_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let err = write_package(&missing, "p", &items(), &labels(), LOCAL_FILES).unwrap_err();
        assert!(matches!(err, ExportError::Root { .. }), "{err}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let err = write_package(&file, "p", &items(), &labels(), LOCAL_FILES).unwrap_err();
        assert!(matches!(err, ExportError::Root { .. }), "{err}");
        assert!(!missing.exists());
    }

    #[test]
    fn an_empty_selection_is_a_valid_package() {
        let dir = tempfile::tempdir().unwrap();
        let package = write_package(dir.path(), "empty", &[], &labels(), LOCAL_FILES).unwrap();
        assert_eq!(
            fs::read_to_string(package.join("tasks.json"))
                .unwrap()
                .trim(),
            "[]"
        );
        assert_eq!(
            fs::read_to_string(package.join("manifest.csv")).unwrap(),
            format!("{MANIFEST_HEADER}\n")
        );
        assert!(entries(&package.join("images")).is_empty());
    }

    #[test]
    fn extensions_come_from_magic_numbers_then_content_types() {
        let cases: [(Option<&str>, &[u8], &str); 12] = [
            (None, PNG, "png"),
            (Some("image/gif"), PNG, "png"),
            (None, JPEG, "jpg"),
            (None, b"RIFF\0\0\0\0WEBPVP8 ", "webp"),
            (None, b"GIF89a...", "gif"),
            (None, b"BM....", "bmp"),
            (None, b"II*\0....", "tif"),
            (None, b"MM\0*....", "tif"),
            (Some(" image/JPEG ; q=1"), b"?", "jpg"),
            (Some("image/x-ms-bmp"), b"?", "bmp"),
            (Some("text/html"), b"<html>", "bin"),
            (None, b"", "bin"),
        ];
        for (content_type, bytes, ext) in cases {
            assert_eq!(
                extension(content_type, bytes),
                ext,
                "{content_type:?} {bytes:?}"
            );
        }
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let root = Path::new("/srv/exports");
        assert!(inside(root, root.join("a").join("b.png")).is_ok());
        for bad in [
            "/srv/exports",
            "/srv/exports/../x",
            "/srv/other/a",
            "/srv/exports/./a/../../b",
        ] {
            assert!(
                matches!(
                    inside(root, PathBuf::from(bad)),
                    Err(ExportError::OutsideRoot { .. })
                ),
                "{bad}"
            );
        }
    }
}
