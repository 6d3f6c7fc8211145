//! Training metrics: `metrics.jsonl` (one `StepReport` per line) and the loss curve as an SVG.

use std::fmt::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::train::run::StepReport;

/// The reports of steps 1..=`upto` already in `path` (a resumed run continues its own history).
pub fn read(path: &Path, upto: usize) -> Result<Vec<StepReport>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        // A line cut short by a kill is dropped, not fatal.
        let Ok(r) = serde_json::from_str::<StepReport>(line) else {
            if i + 1 == text.lines().count() {
                break;
            }
            return Err(Error::DataFormat { path: path.display().to_string(), line: i + 1, detail: "not a metrics record".into() });
        };
        if r.step <= upto {
            out.push(r);
        }
    }
    Ok(out)
}

/// Rewrites `path` with exactly `reports`, atomically.
pub fn rewrite(path: &Path, reports: &[StepReport]) -> Result<()> {
    let mut text = String::new();
    for r in reports {
        text.push_str(&serde_json::to_string(r).unwrap_or_default());
        text.push('\n');
    }
    crate::model::load::write_atomic(path, text.as_bytes())
}

/// The frame every plot here shares: white page, axes, four ticks per axis, labels. Returns the
/// SVG opened and the maps from data to page coordinates.
struct Frame {
    x0: f64,
    x1: f64,
    lo: f64,
    hi: f64,
}

const W: f64 = 720.0;
const H: f64 = 400.0;
const M: f64 = 56.0;

impl Frame {
    fn sx(&self, x: f64) -> f64 {
        M + (x - self.x0) / (self.x1 - self.x0) * (W - 2.0 * M)
    }
    fn sy(&self, y: f64) -> f64 {
        H - M - (y - self.lo) / (self.hi - self.lo) * (H - 2.0 * M)
    }
    /// Axes, ticks and labels for data within [x0, x1] x [lo, hi].
    fn draw(&self, s: &mut String, xlabel: &str, title: &str) {
        let _ = write!(s, r#"<line x1="{M}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, H - M, W - M, H - M);
        let _ = write!(s, r#"<line x1="{M}" y1="{M}" x2="{M}" y2="{}" stroke="black"/>"#, H - M);
        for i in 0..=4 {
            let v = self.lo + (self.hi - self.lo) * i as f64 / 4.0;
            let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{v:.3}</text>"#, M - 6.0, self.sy(v) + 4.0);
            let st = self.x0 + (self.x1 - self.x0) * i as f64 / 4.0;
            let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{st:.0}</text>"#, self.sx(st), H - M + 18.0);
        }
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{xlabel}</text>"#, W / 2.0, H - 12.0);
        let _ = write!(s, r#"<text x="{M}" y="{}">{title}</text>"#, M - 20.0);
    }
}

fn open_svg() -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    )
}

/// Exponential moving average (weight 0.1 per step): the trend through batch noise.
fn ema(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut e = pts.first().map_or(0.0, |p| p.1);
    pts.iter()
        .map(|&(x, y)| {
            e = 0.9 * e + 0.1 * y;
            (x, e)
        })
        .collect()
}

fn polyline(s: &mut String, f: &Frame, pts: &[(f64, f64)], color: &str, width: f64) {
    let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", f.sx(x), f.sy(y))).collect();
    let _ = write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{}"/>"#, path.join(" "));
}

/// The loss against the step, as a self-contained SVG.
pub fn loss_svg(reports: &[StepReport]) -> String {
    let mut s = open_svg();
    let pts: Vec<(f64, f64)> = reports.iter().filter(|r| r.loss.is_finite()).map(|r| (r.step as f64, r.loss)).collect();
    if pts.is_empty() {
        s.push_str(r#"<text x="20" y="40">no steps</text></svg>"#);
        return s;
    }
    let (x0, x1) = (pts[0].0.min(pts[pts.len() - 1].0), pts.iter().map(|p| p.0).fold(f64::MIN, f64::max).max(pts[0].0 + 1.0));
    let lo = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
    let hi = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max).max(lo + 1e-6);
    let f = Frame { x0, x1, lo, hi };
    f.draw(&mut s, "optimizer step", "training loss (mean cross-entropy per target token)");
    polyline(&mut s, &f, &pts, "lightsteelblue", 1.0);
    polyline(&mut s, &f, &ema(&pts), "darkorange", 2.0);
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end" fill="darkorange">moving average</text>"#, W - M, M - 20.0);
    s.push_str("</svg>\n");
    s
}

/// Several named curves against the step (each drawn as its moving average), one color each,
/// with a legend: e.g. the training loss of every arm of an experiment.
pub fn series_svg(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    const COLORS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
    let mut s = open_svg();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).filter(|p| p.1.is_finite()).collect();
    if all.is_empty() {
        s.push_str(r#"<text x="20" y="40">no steps</text></svg>"#);
        return s;
    }
    let x0 = all.iter().map(|p| p.0).fold(f64::MAX, f64::min);
    let x1 = all.iter().map(|p| p.0).fold(f64::MIN, f64::max).max(x0 + 1.0);
    let lo = all.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
    let hi = all.iter().map(|p| p.1).fold(f64::MIN, f64::max).max(lo + 1e-6);
    let f = Frame { x0, x1, lo, hi };
    f.draw(&mut s, "optimizer step", &format!("{title} (moving average)"));
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        polyline(&mut s, &f, &ema(&pts), color, 1.5);
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end" fill="{color}">{name}</text>"#, W - M, M + 14.0 * i as f64);
    }
    s.push_str("</svg>\n");
    s
}

/// Peak resident memory of this process in bytes (Linux), for benchmark reports.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}
