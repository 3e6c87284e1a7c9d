//! Test support: the committed fixture `tests/data/statistics_fixture.json` and comparisons.

use std::sync::OnceLock;

use serde_json::Value;

/// The fixture, parsed once per test binary.
pub(crate) fn load() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/statistics_fixture.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&quote_numbers(&text)).expect("statistics fixture is valid JSON")
    })
}

/// Another committed fixture of `tests/data/` (read and parsed at each call, numbers quoted as
/// in [`load`]).
pub(crate) fn load_named(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&quote_numbers(&text)).expect("fixture is valid JSON")
}

/// Wraps every number token of a JSON text in quotes. serde_json, built without its
/// `float_roundtrip` feature, may parse a float one ulp off, while the fixture's values (bin
/// edges, values on the edges) must arrive exactly; `str::parse::<f64>` rounds correctly.
fn quote_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let (mut in_string, mut escaped, mut in_number) = (false, false, false);
    for ch in text.chars() {
        if in_string {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
            continue;
        }
        let numeric = ch.is_ascii_digit() || matches!(ch, '-' | '+' | '.' | 'e' | 'E');
        if in_number && !numeric {
            out.push('"');
            in_number = false;
        }
        if !in_number && (ch.is_ascii_digit() || ch == '-') {
            out.push('"');
            in_number = true;
        }
        in_string = ch == '"';
        out.push(ch);
    }
    if in_number {
        out.push('"');
    }
    out
}

/// A number of the fixture (stored quoted by [`load`]); null stands for NaN.
pub(crate) fn number(value: &Value) -> f64 {
    match value {
        Value::String(text) => text
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} is not a number: {e}")),
        Value::Null => f64::NAN,
        other => panic!("expected a number, found {other}"),
    }
}

/// A non-negative integer of the fixture.
pub(crate) fn count(value: &Value) -> usize {
    let text = value.as_str().expect("an integer");
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a count: {e}"))
}

/// A JSON array of numbers (null stands for NaN).
pub(crate) fn f64s(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("an array of numbers")
        .iter()
        .map(number)
        .collect()
}

/// A JSON array of numbers that are exactly representable as f32 (the script stores f32 data).
pub(crate) fn f32s(value: &Value) -> Vec<f32> {
    f64s(value).into_iter().map(|v| v as f32).collect()
}

pub(crate) fn usizes(value: &Value) -> Vec<usize> {
    value
        .as_array()
        .expect("an array of integers")
        .iter()
        .map(count)
        .collect()
}

pub(crate) fn bools(value: &Value) -> Vec<bool> {
    value
        .as_array()
        .expect("an array of booleans")
        .iter()
        .map(|v| v.as_bool().expect("a boolean"))
        .collect()
}

/// Relative error of `got` against `want`, with an absolute floor of 1e-300 on the scale
/// (both NaN, or equal infinities, count as equal).
pub(crate) fn relative_error(got: f64, want: f64) -> f64 {
    if (got.is_nan() && want.is_nan()) || got == want {
        return 0.0;
    }
    (got - want).abs() / want.abs().max(1e-300)
}

/// Asserts `|got − want| ≤ rel · |want|` (or exact equality, or both NaN).
#[track_caller]
pub(crate) fn assert_close(got: f64, want: f64, rel: f64, what: &str) {
    let err = relative_error(got, want);
    assert!(
        err <= rel,
        "{what}: got {got:e}, want {want:e} (relative error {err:e} > {rel:e})"
    );
}

/// Asserts `|got − want| ≤ rel · |want| + abs`.
#[track_caller]
pub(crate) fn assert_near(got: f64, want: f64, rel: f64, abs: f64, what: &str) {
    let ok = (got.is_nan() && want.is_nan()) || (got - want).abs() <= rel * want.abs() + abs;
    assert!(
        ok,
        "{what}: got {got:e}, want {want:e} (tolerance {rel:e} relative + {abs:e})"
    );
}
