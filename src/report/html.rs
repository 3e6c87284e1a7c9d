//! The report as one HTML file: tables and inline SVG plots, no script, no external resource.

use std::fmt::Write;

use serde::Serialize;

use super::Summary;
use crate::monitor::evaluate::Status;
use crate::monitor::reference::Reference;

/// Bins of the confidence and entropy histograms.
const BINS: usize = 20;

/// What the plots need beyond the snapshots: histograms and the class mix, period and reference.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlotData {
    pub class_counts: Vec<usize>,
    pub confidence: Vec<f64>,
    pub confidence_reference: Vec<f64>,
    pub entropy: Vec<f64>,
    pub entropy_reference: Vec<f64>,
    /// The entropy axis ends at ln K.
    pub entropy_max: f64,
    /// Embeddings on the reference's first two principal components (empty without embeddings).
    pub embedding_reference: Vec<(f64, f64)>,
    pub embedding_period: Vec<(f64, f64)>,
}

/// Shares of `values` in `BINS` equal bins of [0, max] (the last bin closed).
fn histogram(values: impl Iterator<Item = f64>, max: f64) -> Vec<f64> {
    let mut counts = vec![0usize; BINS];
    let mut n = 0usize;
    for v in values.filter(|v| v.is_finite()) {
        let i = ((v / max) * BINS as f64)
            .floor()
            .clamp(0.0, (BINS - 1) as f64) as usize;
        counts[i] += 1;
        n += 1;
    }
    counts
        .into_iter()
        .map(|c| c as f64 / n.max(1) as f64)
        .collect()
}

impl PlotData {
    pub fn new(reference: &Reference, rows: impl Iterator<Item = (usize, f32, f32)>) -> Self {
        let k = reference.labels.len().max(2);
        let entropy_max = (k as f64).ln();
        let mut class_counts = vec![0usize; reference.labels.len()];
        let mut confidence = Vec::new();
        let mut entropy = Vec::new();
        for (class, c, e) in rows {
            if let Some(n) = class_counts.get_mut(class) {
                *n += 1;
            }
            confidence.push(f64::from(c));
            entropy.push(f64::from(e));
        }
        PlotData {
            class_counts,
            confidence: histogram(confidence.into_iter(), 1.0),
            confidence_reference: histogram(reference.confidence_sorted.iter().copied(), 1.0),
            entropy: histogram(entropy.into_iter(), entropy_max),
            entropy_reference: histogram(reference.entropy_sorted.iter().copied(), entropy_max),
            entropy_max,
            embedding_reference: Vec::new(),
            embedding_period: Vec::new(),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "–".into()
    }
}

fn status_colour(s: Status) -> &'static str {
    match s {
        Status::InsufficientData => "#9e9e9e",
        Status::Ok => "#2e7d32",
        Status::Warn => "#ef6c00",
        Status::Alert => "#c62828",
    }
}

const PERIOD: &str = "#1565c0";
const REFERENCE: &str = "#9e9e9e";
const REFERENCE_POINTS: &str = "#424242";
const SERIES: [&str; 6] = [
    "#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f",
];

/// A plot area with axes: data coordinates to SVG pixels.
struct Frame {
    svg: String,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

const W: f64 = 640.0;
const H: f64 = 280.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

impl Frame {
    fn new(id: &str, title: &str, (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> Self {
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<figure id="{id}"><figcaption>{}</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{}">"#,
            escape(title),
            escape(title)
        );
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="#fafafa" stroke="#bdbdbd"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
        let y1 = if y1 > y0 { y1 } else { y0 + 1.0 };
        let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
        let mut f = Frame {
            svg,
            x0,
            x1,
            y0,
            y1,
        };
        for i in 0..=4 {
            let v = y0 + (y1 - y0) * f64::from(i) / 4.0;
            let y = f.y(v);
            let _ = write!(
                f.svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 4.0,
                y + 4.0,
                short(v)
            );
        }
        f
    }

    fn x(&self, v: f64) -> f64 {
        LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        H - BOTTOM
            - (v.clamp(self.y0, self.y1) - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)
    }

    fn x_label(&mut self, v: f64, text: &str) {
        let x = self.x(v);
        let _ = write!(
            self.svg,
            r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            H - BOTTOM + 14.0,
            escape(text)
        );
    }

    fn bar(&mut self, x: f64, width: f64, v: f64, colour: &str, opacity: f64) {
        let (left, right) = (self.x(x), self.x(x + width));
        let (top, base) = (self.y(v), self.y(self.y0));
        let _ = write!(
            self.svg,
            r#"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="{opacity}"/>"#,
            (right - left).max(0.5),
            (base - top).max(0.0)
        );
    }

    /// A polyline through the finite points, with a dot at each.
    fn line(&mut self, points: &[(f64, f64)], colour: &str, dashed: bool) {
        let pts: Vec<String> = points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", self.x(x), self.y(y)))
            .collect();
        if pts.is_empty() {
            return;
        }
        let dash = if dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = write!(
            self.svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                self.svg,
                r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>"#
            );
        }
    }

    /// A small translucent dot (scatter plots).
    fn point(&mut self, x: f64, y: f64, colour: &str) {
        if x.is_finite() && y.is_finite() {
            let _ = write!(
                self.svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{colour}" fill-opacity="0.45"/>"#,
                self.x(x),
                self.y(y)
            );
        }
    }

    fn dot(&mut self, x: f64, y: f64, colour: &str) {
        if x.is_finite() && y.is_finite() {
            let _ = write!(
                self.svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"/>"#,
                self.x(x),
                self.y(y)
            );
        }
    }

    /// The legend under the plot, wrapped onto more rows (the picture grows) when it is long.
    fn finish(mut self, legend: &[(&str, &str)]) -> String {
        let (mut x, mut row) = (LEFT, 0.0);
        for (name, colour) in legend {
            let width = 24.0 + 6.5 * name.chars().count() as f64;
            if x + width > W - RIGHT && x > LEFT {
                x = LEFT;
                row += 16.0;
            }
            let _ = write!(
                self.svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                H - 14.0 + row,
                x + 14.0,
                H - 5.0 + row,
                escape(name)
            );
            x += width;
        }
        if row > 0.0 {
            let tall = H + row;
            self.svg = self.svg.replacen(
                &format!(r#"height="{H}" viewBox="0 0 {W} {H}""#),
                &format!(r#"height="{tall}" viewBox="0 0 {W} {tall}""#),
                1,
            );
        }
        self.svg.push_str("</svg></figure>\n");
        self.svg
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn class_mix(summary: &Summary, reference: &Reference) -> String {
    let counts = &summary.plots.class_counts;
    let total = counts.iter().sum::<usize>().max(1) as f64;
    let k = counts.len().max(1);
    let top = counts
        .iter()
        .map(|&c| c as f64 / total)
        .chain(reference.class_ratios.iter().copied())
        .fold(0.0f64, f64::max);
    let mut f = Frame::new(
        "plot-class-mix",
        "Class mix: share of predictions per class, period against reference",
        (0.0, k as f64),
        (0.0, (top * 1.1).max(0.01)),
    );
    for (i, label) in reference.labels.iter().enumerate() {
        let x = i as f64;
        f.bar(
            x + 0.1,
            0.4,
            counts.get(i).copied().unwrap_or(0) as f64 / total,
            PERIOD,
            0.9,
        );
        f.bar(
            x + 0.5,
            0.4,
            reference.class_ratios.get(i).copied().unwrap_or(0.0),
            REFERENCE,
            0.9,
        );
        f.x_label(x + 0.5, label);
    }
    f.finish(&[("period", PERIOD), ("reference", REFERENCE)])
}

fn histogram_plot(id: &str, title: &str, period: &[f64], reference: &[f64], max: f64) -> String {
    let top = period
        .iter()
        .chain(reference)
        .fold(0.0f64, |a, &b| a.max(b));
    let mut f = Frame::new(id, title, (0.0, max), (0.0, (top * 1.1).max(0.01)));
    let w = max / BINS as f64;
    for (i, (&p, &r)) in period.iter().zip(reference).enumerate() {
        let x = i as f64 * w;
        f.bar(x, w, r, REFERENCE, 0.5);
        f.bar(x + w * 0.25, w * 0.5, p, PERIOD, 0.85);
    }
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        f.x_label(v, &short(v));
    }
    f.finish(&[("period", PERIOD), ("reference", REFERENCE)])
}

/// Bucket starts under the x axis: `HH:MM`, or `HH:MM:SS` when buckets are under a minute.
fn time_labels(f: &mut Frame, summary: &Summary) {
    let n = summary.buckets.len();
    let short = summary.buckets.windows(2).any(|w| {
        crate::time::parse_rfc3339(&w[1].from)
            .zip(crate::time::parse_rfc3339(&w[0].from))
            .is_some_and(|(b, a)| b - a < 60_000_000)
    });
    let end = if short { 19 } else { 16 };
    for (i, b) in summary.buckets.iter().enumerate() {
        if n <= 12 || i % n.div_ceil(12) == 0 {
            f.x_label(i as f64, b.from.get(11..end).unwrap_or(&b.from));
        }
    }
}

/// A family's overall result: its first entry (`feature = "all"` after correction, or its only
/// feature), as `/v1/monitor` lists them.
fn overall<'a>(
    snapshot: &'a crate::monitor::Snapshot,
    family: &str,
) -> Option<&'a crate::monitor::TestReport> {
    snapshot.tests.iter().find(|t| t.test == family)
}

/// Per bucket, each test family's effect size over its alert threshold (1: large enough to
/// alert when significant), the dot coloured by the family's status.
fn tests_over_time(summary: &Summary) -> String {
    let n = summary.buckets.len();
    let mut families: Vec<&str> = Vec::new();
    for t in &summary.period.tests {
        if !families.contains(&t.test) {
            families.push(t.test);
        }
    }
    let ratio = |t: &crate::monitor::TestReport| {
        if t.threshold > 0.0 {
            t.effect_size / t.threshold
        } else {
            f64::NAN
        }
    };
    let top = summary
        .buckets
        .iter()
        .flat_map(|b| {
            families
                .iter()
                .filter_map(|f| overall(&b.snapshot, f))
                .map(ratio)
        })
        .filter(|v| v.is_finite())
        .fold(1.5f64, f64::max);
    let mut f = Frame::new(
        "plot-tests",
        "Each test over time: effect size / its alert threshold per bucket (dots: status)",
        (-0.5, n.max(1) as f64 - 0.5),
        (0.0, top * 1.05),
    );
    f.line(&[(-0.5, 1.0), (n as f64 - 0.5, 1.0)], "#c62828", true);
    let mut legend = Vec::new();
    for (j, family) in families.iter().enumerate() {
        let colour = SERIES[j % SERIES.len()];
        let points: Vec<(f64, f64)> = summary
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let t = overall(&b.snapshot, family)?;
                Some((i as f64, ratio(t)))
            })
            .collect();
        f.line(&points, colour, false);
        for (i, b) in summary.buckets.iter().enumerate() {
            if let Some(t) = overall(&b.snapshot, family) {
                f.dot(i as f64, ratio(t), status_colour(t.status));
            }
        }
        legend.push((*family, colour));
    }
    time_labels(&mut f, summary);
    f.finish(&legend)
}

/// One number of a snapshot, where it has it.
type Measure = fn(&crate::monitor::Snapshot) -> Option<f64>;

/// Per bucket, the label-free accuracy estimates beside the labeled accuracy where labels came
/// back.
fn accuracy_over_time(summary: &Summary) -> String {
    let n = summary.buckets.len();
    let series: [(&str, Measure); 4] = [
        ("ATC estimate", |s| s.estimates.atc),
        ("DoC estimate", |s| s.estimates.doc),
        ("average confidence", |s| s.estimates.ac),
        ("labeled accuracy", |s| {
            s.labeled.as_ref().map(|l| l.accuracy)
        }),
    ];
    let mut f = Frame::new(
        "plot-accuracy",
        "Accuracy over time: label-free estimates and, where labels came back, labeled accuracy",
        (-0.5, n.max(1) as f64 - 0.5),
        (0.0, 1.0),
    );
    let mut legend = Vec::new();
    for (j, (name, get)) in series.iter().enumerate() {
        let colour = SERIES[j];
        let points: Vec<(f64, f64)> = summary
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((i as f64, get(&b.snapshot)?)))
            .collect();
        f.line(&points, colour, j == 3);
        legend.push((*name, colour));
    }
    time_labels(&mut f, summary);
    f.finish(&legend)
}

/// Accuracy against confidence per bin of the labeled predictions (15 equal bins), and the
/// diagonal of perfect calibration.
fn reliability(summary: &Summary) -> String {
    let mut f = Frame::new(
        "plot-reliability",
        "Reliability diagram of the labeled predictions: accuracy per confidence bin",
        (0.0, 1.0),
        (0.0, 1.0),
    );
    f.line(&[(0.0, 0.0), (1.0, 1.0)], REFERENCE, true);
    if let Some(labeled) = &summary.period.labeled {
        for bin in labeled.reliability.iter().filter(|b| b.count > 0) {
            f.bar(bin.lo, bin.hi - bin.lo, bin.accuracy, PERIOD, 0.8);
            f.dot((bin.lo + bin.hi) / 2.0, bin.confidence, "#ef6c00");
        }
    }
    for i in 0..=4 {
        let v = f64::from(i) / 4.0;
        f.x_label(v, &short(v));
    }
    f.finish(&[("accuracy", PERIOD), ("mean confidence", "#ef6c00")])
}

/// The reference's and the period's embeddings on the reference's first two principal axes.
fn embedding_map(summary: &Summary) -> String {
    let (r, p) = (
        &summary.plots.embedding_reference,
        &summary.plots.embedding_period,
    );
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in r
        .iter()
        .chain(p.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
    {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (-1.0, 1.0, -1.0, 1.0);
    }
    let title = if r.is_empty() {
        "Embeddings: the model has no embedding output (or the reference none)"
    } else {
        "Embeddings on the reference's first two principal components: reference and period"
    };
    let mut f = Frame::new("plot-embeddings", title, (x0, x1), (y0, y1));
    // The period first, the (fewer) reference points on top, darker.
    for &(x, y) in p {
        f.point(x, y, PERIOD);
    }
    for &(x, y) in r {
        f.point(x, y, REFERENCE_POINTS);
    }
    f.finish(&[
        ("reference", REFERENCE_POINTS),
        ("period (every k-th prediction)", PERIOD),
    ])
}

/// Standard base64 (RFC 4648, padded), for images inlined as data URIs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The best relabel candidates as thumbnails (images inlined), when a store was given.
fn candidates(summary: &Summary) -> String {
    if summary.candidates.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<figure id=\"plot-candidates\"><figcaption>The best relabel candidates of this version (score · predicted label · confidence)</figcaption><div>\n",
    );
    for c in &summary.candidates {
        let _ = writeln!(
            out,
            r#"<div style="display:inline-block;margin:4px;text-align:center;font-size:11px"><img alt="{}" src="data:{};base64,{}" width="64" height="64" style="image-rendering:pixelated;border:1px solid #bdbdbd"><br>{:.3} · {} · {:.2}</div>"#,
            escape(&c.request_id),
            escape(&c.content_type),
            base64(&c.image),
            c.score,
            escape(&c.predicted_label),
            c.confidence
        );
    }
    out.push_str("</div></figure>\n");
    out
}

/// The whole report.
pub fn render(summary: &Summary, reference: &Reference) -> String {
    let s = summary;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>shiftwatch report: {model}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #212121; max-width: 1340px; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }}
td, th {{ border: 1px solid #e0e0e0; padding: 3px 8px; text-align: right; }}
th {{ background: #f5f5f5; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 8px 12px 16px 0; vertical-align: top; }}
figcaption {{ font-size: 13px; font-weight: bold; margin-bottom: 4px; max-width: 640px; }}
.status {{ color: #fff; border-radius: 3px; padding: 1px 6px; }}
</style></head><body>
<h1>shiftwatch report: model {model}, version {version}</h1>
<p>{rows} predictions of version {version} from {files} files of <code>{log}</code>{labeled}; {other}
period {from} to {to}; {buckets} time buckets. Every statistic comes from the sidecar's own monitor code (the JSON summary has the same numbers).</p>
"#,
        model = escape(&s.model),
        version = escape(&s.model_version),
        rows = s.rows,
        files = s.files,
        log = escape(&s.log),
        labeled = if s.labeled_rows > 0 {
            format!(", {} of them with a delayed label", s.labeled_rows)
        } else {
            ", none with a delayed label".into()
        },
        other = if s.rows_other_versions > 0 {
            format!(
                "{} predictions of other versions left out (each version is compared only with its own reference); ",
                s.rows_other_versions
            )
        } else {
            String::new()
        },
        from = escape(s.from.as_deref().unwrap_or("the first prediction")),
        to = escape(s.to.as_deref().unwrap_or("the last")),
        buckets = s.buckets.len(),
    );
    out.push_str("<h2>Tests over the whole period (each family's overall result first, then its features)</h2>\n<table id=\"tests\"><tr><th>test</th><th>feature</th><th>statistic</th><th>p-value</th><th>effect size</th><th>threshold</th><th>n window</th><th>n reference</th><th>status</th></tr>\n");
    for t in &s.period.tests {
        let _ = writeln!(
            out,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><span class="status" style="background:{}">{}</span></td></tr>"#,
            t.test,
            escape(&t.feature),
            number(t.statistic),
            number(t.p_value),
            number(t.effect_size),
            number(t.threshold),
            t.n_window,
            t.n_reference,
            status_colour(t.status),
            serde_json::to_value(t.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        );
    }
    out.push_str("</table>\n<h2>Accuracy</h2>\n<table id=\"estimates\"><tr><th>measure</th><th>value</th></tr>\n");
    let e = &s.period.estimates;
    let opt = |v: Option<f64>| v.map_or("–".to_string(), number);
    for (name, v) in [
        ("average confidence (AC)", e.ac),
        ("ATC estimate", e.atc),
        ("DoC estimate", e.doc),
        ("overconfidence gap", e.overconfidence_gap),
    ] {
        let _ = writeln!(out, "<tr><td>{name}</td><td>{}</td></tr>", opt(v));
    }
    if let Some(l) = &s.period.labeled {
        let _ = writeln!(out, "<tr><td>labeled predictions</td><td>{}</td></tr>", l.n);
        for (name, v) in [
            ("labeled accuracy", l.accuracy),
            ("ECE (15 bins)", l.ece),
            ("adaptive ECE", l.adaptive_ece),
            ("MCE", l.mce),
            ("Brier", l.brier),
            ("NLL", l.nll),
        ] {
            let _ = writeln!(out, "<tr><td>{name}</td><td>{}</td></tr>", number(v));
        }
    }
    out.push_str("</table>\n<h2>Plots</h2>\n");
    out.push_str(&class_mix(s, reference));
    out.push_str(&histogram_plot(
        "plot-confidence",
        "Confidence: share of predictions per bin, period against reference",
        &s.plots.confidence,
        &s.plots.confidence_reference,
        1.0,
    ));
    out.push_str(&histogram_plot(
        "plot-entropy",
        "Entropy (nats, up to ln K): share of predictions per bin, period against reference",
        &s.plots.entropy,
        &s.plots.entropy_reference,
        s.plots.entropy_max,
    ));
    out.push_str(&tests_over_time(s));
    out.push_str(&accuracy_over_time(s));
    out.push_str(&reliability(s));
    out.push_str(&embedding_map(s));
    out.push_str(&candidates(s));
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_shares_with_the_top_edge_in_the_last_bin() {
        let h = histogram([0.0, 0.5, 1.0, 1.0, f64::NAN].into_iter(), 1.0);
        assert_eq!(h.len(), BINS);
        assert_eq!(h[0], 0.25);
        assert_eq!(h[BINS / 2], 0.25);
        assert_eq!(h[BINS - 1], 0.5);
        for (raw, encoded) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0xfe, 0x00][..], "//4A"),
        ] {
            assert_eq!(base64(raw), encoded);
        }
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
