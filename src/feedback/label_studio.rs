//! Label Studio's own payloads read as delayed labels: its webhook bodies (`ANNOTATION_CREATED`,
//! `ANNOTATION_UPDATED`, `ANNOTATIONS_CREATED`) and its JSON exports (an array of tasks, each with
//! its `annotations`; a single task object too).
//!
//! A task names its prediction by `data.request_id` (written there by the export package); the
//! label is the first choice of the task's latest annotation that was not cancelled (latest:
//! the greatest `updated_at`, then `created_at`, then `id`). Tasks nobody has labeled yet, or
//! whose annotations hold no choice, are skipped with a reason, not counted as feedback; a task
//! without a usable `request_id` is an invalid item. Pure: a parsed JSON value in, items out;
//! every shape is accepted without panicking, and a body that is none of Label Studio's
//! payloads is an error saying what was expected.

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// The webhook actions that carry annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    AnnotationCreated,
    AnnotationUpdated,
    AnnotationsCreated,
}

impl Action {
    pub const ALL: [Action; 3] = [
        Action::AnnotationCreated,
        Action::AnnotationUpdated,
        Action::AnnotationsCreated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::AnnotationCreated => "ANNOTATION_CREATED",
            Action::AnnotationUpdated => "ANNOTATION_UPDATED",
            Action::AnnotationsCreated => "ANNOTATIONS_CREATED",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// What kind of payload came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A webhook with annotations.
    Webhook(Action),
    /// A webhook for an action that carries no labels (`PROJECT_UPDATED`, `TASKS_CREATED`,
    /// `ANNOTATIONS_DELETED`, …): accepted and ignored.
    IgnoredWebhook(String),
    /// A JSON export (or one task).
    Export,
}

/// One task's label, or why it gives none.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A label for a prediction.
    Label {
        task_id: Option<i64>,
        request_id: String,
        label: String,
    },
    /// Not a label: no annotation yet, all cancelled, or no choice in the latest one.
    Skipped {
        task_id: Option<i64>,
        reason: &'static str,
    },
    /// A task that cannot be matched to a prediction (no `data.request_id`, or not a task).
    Invalid { task_id: Option<i64>, error: String },
}

/// The payload's kind and its items, one per task (a webhook's annotation pairs with its task).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub payload: Payload,
    pub items: Vec<Item>,
}

/// Why a body is none of Label Studio's payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(String);

fn error<T>(message: impl Into<String>) -> Result<T, PayloadError> {
    Err(PayloadError(message.into()))
}

/// Reads a Label Studio webhook body or JSON export. `max_items` bounds the tasks (or a bulk
/// webhook's annotations) one body may carry.
pub fn parse(value: &Value, max_items: usize) -> Result<Parsed, PayloadError> {
    match value {
        Value::Array(tasks) => {
            if tasks.len() > max_items {
                return error(format!("at most {max_items} tasks per request"));
            }
            Ok(Parsed {
                payload: Payload::Export,
                items: tasks.iter().map(export_task).collect(),
            })
        }
        Value::Object(obj) => match obj.get("action") {
            Some(Value::String(action)) => webhook(obj, action, max_items),
            Some(_) => error("`action` must be a string, as Label Studio's webhooks send it"),
            None if obj.contains_key("data") && obj.contains_key("annotations") => Ok(Parsed {
                payload: Payload::Export,
                items: vec![export_task(value)],
            }),
            None => error(
                "expected a Label Studio webhook body (with `action`) or a JSON export \
                 (an array of tasks with `data` and `annotations`)",
            ),
        },
        _ => error(
            "expected a Label Studio webhook body (an object with `action`) or a JSON export \
             (an array of tasks)",
        ),
    }
}

fn webhook(
    obj: &Map<String, Value>,
    action: &str,
    max_items: usize,
) -> Result<Parsed, PayloadError> {
    let Some(action) = Action::parse(action) else {
        return Ok(Parsed {
            payload: Payload::IgnoredWebhook(action.chars().take(64).collect()),
            items: Vec::new(),
        });
    };
    let (Some(annotation), Some(task)) = (obj.get("annotation"), obj.get("task")) else {
        return error(format!(
            "the {} webhook came without `annotation` and `task`: turn on \"send payload\" \
             in the webhook's settings",
            action.as_str()
        ));
    };
    let items = match (action, annotation, task) {
        (Action::AnnotationsCreated, Value::Array(annotations), Value::Array(tasks)) => {
            if annotations.len() > max_items || tasks.len() > max_items {
                return error(format!("at most {max_items} annotations per request"));
            }
            annotations
                .iter()
                .enumerate()
                .map(|(n, annotation)| {
                    // Each annotation names its task by id; without ids, the tasks pair by
                    // position.
                    let by_id = annotation
                        .get("task")
                        .and_then(Value::as_i64)
                        .and_then(|id| tasks.iter().find(|t| task_id(t) == Some(id)));
                    match by_id.or_else(|| tasks.get(n)) {
                        Some(task) => webhook_item(task, annotation),
                        None => Item::Invalid {
                            task_id: annotation.get("task").and_then(Value::as_i64),
                            error: "the annotation's task is not in the webhook's `task` list"
                                .into(),
                        },
                    }
                })
                .collect()
        }
        (Action::AnnotationsCreated, _, _) => {
            return error("ANNOTATIONS_CREATED carries arrays in `annotation` and `task`");
        }
        (_, Value::Object(_), Value::Object(_)) => vec![webhook_item(task, annotation)],
        _ => {
            return error(format!(
                "{} carries one object in `annotation` and one in `task`",
                action.as_str()
            ));
        }
    };
    Ok(Parsed {
        payload: Payload::Webhook(action),
        items,
    })
}

fn task_id(task: &Value) -> Option<i64> {
    task.get("id").and_then(Value::as_i64)
}

/// A task's request id: `data.request_id`, 1 to 128 visible ASCII characters.
fn request_id(task: &Value) -> Result<String, String> {
    let data = task
        .get("data")
        .and_then(Value::as_object)
        .ok_or("the task has no `data` object")?;
    let id = data.get("request_id").and_then(Value::as_str).ok_or(
        "the task's data has no `request_id` string (was it imported from a shiftwatch package?)",
    )?;
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("data.request_id must be 1 to 128 visible ASCII characters".into());
    }
    Ok(id.to_string())
}

fn webhook_item(task: &Value, annotation: &Value) -> Item {
    item(task, std::slice::from_ref(annotation))
}

fn export_task(task: &Value) -> Item {
    match task.get("annotations") {
        Some(Value::Array(annotations)) => item(task, annotations),
        Some(Value::Null) | None if task.is_object() => item(task, &[]),
        _ => Item::Invalid {
            task_id: task_id(task),
            error: "a task must be an object whose `annotations` is an array".into(),
        },
    }
}

fn item(task: &Value, annotations: &[Value]) -> Item {
    let task_id = task_id(task);
    let request_id = match request_id(task) {
        Ok(id) => id,
        Err(error) => return Item::Invalid { task_id, error },
    };
    let latest = annotations
        .iter()
        .filter(|a| a.is_object() && a.get("was_cancelled").and_then(Value::as_bool) != Some(true))
        .max_by(|a, b| later(a, b));
    let Some(latest) = latest else {
        return Item::Skipped {
            task_id,
            reason: "no annotation that was not cancelled",
        };
    };
    match first_choice(latest) {
        Some(label) => Item::Label {
            task_id,
            request_id,
            label,
        },
        None => Item::Skipped {
            task_id,
            reason: "the latest annotation holds no choice",
        },
    }
}

/// Orders annotations by `updated_at`, then `created_at`, then `id` (Label Studio writes its
/// timestamps in one ISO 8601 form, so their text orders like their time).
fn later(a: &Value, b: &Value) -> Ordering {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    text(a, "updated_at")
        .cmp(&text(b, "updated_at"))
        .then_with(|| text(a, "created_at").cmp(&text(b, "created_at")))
        .then_with(|| {
            let id = |v: &Value| v.get("id").and_then(Value::as_i64).unwrap_or(i64::MIN);
            id(a).cmp(&id(b))
        })
}

/// The first choice of an annotation's first `choices` result.
fn first_choice(annotation: &Value) -> Option<String> {
    annotation
        .get("result")?
        .as_array()?
        .iter()
        .filter(|r| r.get("type").and_then(Value::as_str) == Some("choices"))
        .find_map(|r| {
            r.get("value")?
                .get("choices")?
                .as_array()?
                .first()?
                .as_str()
                .map(str::to_string)
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn choice(label: &str) -> Value {
        json!([{"from_name": "label", "to_name": "image", "type": "choices",
                "value": {"choices": [label]}}])
    }

    fn task(id: i64, request_id: &str, annotations: Value) -> Value {
        json!({"id": id, "data": {"image": "/data/local-files/?d=p/images/a.png",
               "request_id": request_id}, "annotations": annotations})
    }

    fn label(task_id: i64, request_id: &str, label: &str) -> Item {
        Item::Label {
            task_id: Some(task_id),
            request_id: request_id.into(),
            label: label.into(),
        }
    }

    #[test]
    fn an_export_gives_each_tasks_latest_uncancelled_choice() {
        let export = json!([
            task(
                1,
                "r1",
                json!([{"id": 10, "result": choice("7"), "was_cancelled": false,
                                  "created_at": "2026-01-01T10:00:00.000000Z",
                                  "updated_at": "2026-01-01T10:00:00.000000Z"}])
            ),
            // Relabeled later: the newer annotation wins, whatever the array order.
            task(
                2,
                "r2",
                json!([
                    {"id": 12, "result": choice("3"), "updated_at": "2026-01-02T09:00:00.000000Z"},
                    {"id": 11, "result": choice("8"), "updated_at": "2026-01-01T09:00:00.000000Z"},
                ])
            ),
            // The newest was cancelled (skipped in Label Studio): the one before counts.
            task(
                3,
                "r3",
                json!([
                    {"id": 13, "result": choice("1")},
                    {"id": 14, "result": [], "was_cancelled": true},
                ])
            ),
            task(4, "r4", json!([])),
            task(
                5,
                "r5",
                json!([{"id": 15, "result": [{"type": "textarea",
                                  "value": {"text": ["hm"]}}]}])
            ),
            json!({"id": 6, "data": {"image": "x.png"}, "annotations": [{"result": choice("2")}]}),
            json!("not a task"),
        ]);
        let parsed = parse(&export, 100).unwrap();
        assert_eq!(parsed.payload, Payload::Export);
        assert_eq!(parsed.items[0], label(1, "r1", "7"));
        assert_eq!(parsed.items[1], label(2, "r2", "3"));
        assert_eq!(parsed.items[2], label(3, "r3", "1"));
        assert!(matches!(
            parsed.items[3],
            Item::Skipped {
                task_id: Some(4),
                ..
            }
        ));
        assert!(matches!(
            parsed.items[4],
            Item::Skipped {
                task_id: Some(5),
                ..
            }
        ));
        assert!(
            matches!(&parsed.items[5], Item::Invalid { task_id: Some(6), error } if error.contains("request_id"))
        );
        assert!(matches!(
            parsed.items[6],
            Item::Invalid { task_id: None, .. }
        ));
        // One task on its own (as /api/tasks/{id} returns it).
        let one = parse(&task(9, "r9", json!([{"result": choice("0")}])), 100).unwrap();
        assert_eq!(one.items, vec![label(9, "r9", "0")]);
    }

    #[test]
    fn webhooks_pair_annotations_with_their_tasks() {
        let created = json!({
            "action": "ANNOTATION_CREATED",
            "annotation": {"id": 5, "task": 2, "result": choice("4"), "was_cancelled": false},
            "task": {"id": 2, "data": {"request_id": "r2"}},
            "project": {"id": 1},
        });
        let parsed = parse(&created, 100).unwrap();
        assert_eq!(parsed.payload, Payload::Webhook(Action::AnnotationCreated));
        assert_eq!(parsed.items, vec![label(2, "r2", "4")]);
        let mut updated = created.clone();
        updated["action"] = json!("ANNOTATION_UPDATED");
        updated["annotation"]["result"] = choice("9");
        assert_eq!(
            parse(&updated, 100).unwrap().items,
            vec![label(2, "r2", "9")]
        );
        // Bulk: annotations name their tasks by id, in any order.
        let bulk = json!({
            "action": "ANNOTATIONS_CREATED",
            "annotation": [{"task": 8, "result": choice("1")}, {"task": 7, "result": choice("2")},
                           {"task": 99, "result": choice("3")}],
            "task": [{"id": 7, "data": {"request_id": "r7"}}, {"id": 8, "data": {"request_id": "r8"}}],
        });
        let parsed = parse(&bulk, 100).unwrap();
        assert_eq!(
            parsed.items[..2],
            [label(8, "r8", "1"), label(7, "r7", "2")]
        );
        assert!(matches!(
            parsed.items[2],
            Item::Invalid {
                task_id: Some(99),
                ..
            }
        ));
        assert!(parse(&bulk, 2).is_err());
        // Actions without labels are accepted and ignored.
        let other = parse(&json!({"action": "PROJECT_UPDATED", "project": {}}), 100).unwrap();
        assert_eq!(
            other.payload,
            Payload::IgnoredWebhook("PROJECT_UPDATED".into())
        );
        assert!(other.items.is_empty());
    }

    #[test]
    fn malformed_payloads_are_errors_that_say_what_was_expected() {
        for (body, says) in [
            (json!(7), "webhook body"),
            (json!({"label": "7"}), "webhook body"),
            (json!({"action": 3}), "must be a string"),
            (json!({"action": "ANNOTATION_CREATED"}), "send payload"),
            (
                json!({"action": "ANNOTATION_CREATED", "annotation": [], "task": {}}),
                "one object",
            ),
            (
                json!({"action": "ANNOTATIONS_CREATED", "annotation": {}, "task": {}}),
                "arrays",
            ),
        ] {
            let e = parse(&body, 100).unwrap_err().to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
        assert!(parse(&json!([1, 2, 3]), 2).is_err());
        // Odd shapes inside a task are items, not panics.
        for odd in [
            json!({"data": [], "annotations": {}}),
            json!({"data": {"request_id": ""}, "annotations": []}),
            json!({"data": {"request_id": "a b"}, "annotations": []}),
            json!({"data": {"request_id": 5}, "annotations": [null, 1, {"result": {"x": 1}}]}),
            json!({"data": {"request_id": "ok"}, "annotations": [{"result": [{"type": "choices",
                   "value": {"choices": []}}]}, {"result": [{"type": "choices", "value": 1}]}]}),
        ] {
            let parsed = parse(&json!([odd]), 10).unwrap();
            assert!(
                !matches!(parsed.items[0], Item::Label { .. }),
                "{odd}: {:?}",
                parsed.items
            );
        }
    }
}
