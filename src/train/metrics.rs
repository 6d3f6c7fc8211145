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

/// The loss (and, when logged, the FLeX penalty) against the step, as a self-contained SVG.
pub fn loss_svg(reports: &[StepReport]) -> String {
    let (w, h, m) = (720.0, 400.0, 56.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let pts: Vec<(f64, f64)> = reports.iter().filter(|r| r.loss.is_finite()).map(|r| (r.step as f64, r.loss)).collect();
    if pts.is_empty() {
        s.push_str(r#"<text x="20" y="40">no steps</text></svg>"#);
        return s;
    }
    let (x0, x1) = (pts[0].0.min(pts[pts.len() - 1].0), pts.iter().map(|p| p.0).fold(f64::MIN, f64::max).max(pts[0].0 + 1.0));
    let lo = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
    let hi = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max).max(lo + 1e-6);
    let sx = |x: f64| m + (x - x0) / (x1 - x0) * (w - 2.0 * m);
    let sy = |y: f64| h - m - (y - lo) / (hi - lo) * (h - 2.0 * m);
    let _ = write!(s, r#"<line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, h - m, w - m, h - m);
    let _ = write!(s, r#"<line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/>"#, h - m);
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{v:.3}</text>"#, m - 6.0, sy(v) + 4.0);
        let st = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{st:.0}</text>"#, sx(st), h - m + 18.0);
    }
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">optimizer step</text>"#, w / 2.0, h - 12.0);
    let _ = write!(s, r#"<text x="{m}" y="{}">training loss (mean cross-entropy per target token)</text>"#, m - 20.0);
    let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
    let _ = write!(s, r#"<polyline fill="none" stroke="lightsteelblue" stroke-width="1" points="{}"/>"#, path.join(" "));
    // An exponential moving average (weight 0.1 per step) shows the trend through batch noise.
    let mut ema = pts[0].1;
    let smooth: Vec<String> = pts
        .iter()
        .map(|&(x, y)| {
            ema = 0.9 * ema + 0.1 * y;
            format!("{:.1},{:.1}", sx(x), sy(ema))
        })
        .collect();
    let _ = write!(s, r#"<polyline fill="none" stroke="darkorange" stroke-width="2" points="{}"/>"#, smooth.join(" "));
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end" fill="darkorange">moving average</text>"#, w - m, m - 20.0);
    s.push_str("</svg>\n");
    s
}
