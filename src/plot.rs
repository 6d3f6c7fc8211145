//! Line charts as self-contained SVG text, for every plot flexlora writes: a training run's
//! `loss.svg` (`train::metrics::loss_svg`), an experiment's curves per run (`series_svg`) and its
//! pass@1 chart (`experiment::report`). One page size, one frame (axes, four ticks per axis,
//! labels), one way to draw a curve, so the plots look alike and the code exists once.
//!
//! Pure string building: no file access, builds for wasm32 too.

use std::fmt::Write;

/// Page width and height, and the margin around the plot area, in SVG units.
pub const W: f64 = 720.0;
pub const H: f64 = 400.0;
pub const M: f64 = 56.0;

/// The data window [x0, x1] x [lo, hi] mapped onto the plot area.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub x0: f64,
    pub x1: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Frame {
    /// The window holding every finite point, the y range widened to include 0 (a loss curve is
    /// read against zero); `None` without a finite point.
    pub fn fit<'a>(pts: impl IntoIterator<Item = &'a (f64, f64)>) -> Option<Frame> {
        let pts: Vec<(f64, f64)> = pts.into_iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        if pts.is_empty() {
            return None;
        }
        let x0 = pts.iter().map(|p| p.0).fold(f64::MAX, f64::min);
        let x1 = pts.iter().map(|p| p.0).fold(f64::MIN, f64::max).max(x0 + 1.0);
        let lo = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
        let hi = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max).max(lo + 1e-6);
        Some(Frame { x0, x1, lo, hi })
    }

    /// Like `fit`, but the y range only spans the points (a quantity whose change matters more
    /// than its distance from zero, such as a penalty that moves by 1%).
    pub fn fit_tight<'a>(pts: impl IntoIterator<Item = &'a (f64, f64)> + Clone) -> Option<Frame> {
        let f = Frame::fit(pts.clone())?;
        let ys = || pts.clone().into_iter().map(|p| p.1).filter(|y| y.is_finite());
        let lo = ys().fold(f64::MAX, f64::min);
        let hi = ys().fold(f64::MIN, f64::max).max(lo + lo.abs() * 1e-6 + 1e-12);
        Some(Frame { lo, hi, ..f })
    }

    pub fn sx(&self, x: f64) -> f64 {
        M + (x - self.x0) / (self.x1 - self.x0) * (W - 2.0 * M)
    }

    pub fn sy(&self, y: f64) -> f64 {
        H - M - (y - self.lo) / (self.hi - self.lo) * (H - 2.0 * M)
    }

    /// The two axis lines, the y ticks on the left and the title above.
    pub fn y_axis(&self, s: &mut String, title: &str) {
        let _ = write!(s, r#"<line x1="{M}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, H - M, W - M, H - M);
        let _ = write!(s, r#"<line x1="{M}" y1="{M}" x2="{M}" y2="{}" stroke="black"/>"#, H - M);
        for i in 0..=4 {
            let v = self.lo + (self.hi - self.lo) * i as f64 / 4.0;
            let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{v:.3}</text>"#, M - 6.0, self.sy(v) + 4.0);
        }
        let _ = write!(s, r#"<text x="{M}" y="{}">{title}</text>"#, M - 20.0);
    }

    /// Axes, ticks and labels for a curve against a numeric x (`xlabel`).
    pub fn axes(&self, s: &mut String, xlabel: &str, title: &str) {
        self.y_axis(s, title);
        for i in 0..=4 {
            let st = self.x0 + (self.x1 - self.x0) * i as f64 / 4.0;
            let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{st:.0}</text>"#, self.sx(st), H - M + 18.0);
        }
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{xlabel}</text>"#, W / 2.0, H - 12.0);
    }

    /// A second y axis on the right for this frame's y range (a quantity of another scale drawn
    /// over the same x), its ticks and `label` in `color`.
    pub fn right_axis(&self, s: &mut String, label: &str, color: &str) {
        let x = W - M;
        let _ = write!(s, r#"<line x1="{x}" y1="{M}" x2="{x}" y2="{}" stroke="{color}"/>"#, H - M);
        for i in 0..=4 {
            let v = self.lo + (self.hi - self.lo) * i as f64 / 4.0;
            let text = if v == 0.0 || (1e-3..1e5).contains(&v.abs()) { format!("{v:.3}") } else { format!("{v:.2e}") };
            let _ = write!(s, r#"<text x="{}" y="{}" fill="{color}">{text}</text>"#, x + 4.0, self.sy(v) + 4.0);
        }
        let _ = write!(s, r#"<text x="{x}" y="{}" text-anchor="end" fill="{color}">{label} (right axis)</text>"#, H - 12.0);
    }
}

/// The opened page: white background, the shared size and font. Close it with [`close`].
pub fn open() -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    )
}

pub fn close(mut s: String) -> String {
    s.push_str("</svg>\n");
    s
}

/// A page that says there is nothing to plot yet.
pub fn empty(what: &str) -> String {
    close(open() + &format!(r#"<text x="20" y="40">{what}</text>"#))
}

/// Exponential moving average (weight 0.1 per point): the trend through batch noise.
pub fn ema(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut e = pts.first().map_or(0.0, |p| p.1);
    pts.iter()
        .map(|&(x, y)| {
            e = 0.9 * e + 0.1 * y;
            (x, e)
        })
        .collect()
}

/// `pts` joined by straight lines (`dash`: an SVG stroke-dasharray, "" for a solid line).
pub fn polyline(s: &mut String, f: &Frame, pts: &[(f64, f64)], color: &str, width: f64, dash: &str) {
    let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", f.sx(x), f.sy(y))).collect();
    let dash = if dash.is_empty() { String::new() } else { format!(r#" stroke-dasharray="{dash}""#) };
    let _ = write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="{width}"{dash} points="{}"/>"#, path.join(" "));
}

/// A dot at each point.
pub fn dots(s: &mut String, f: &Frame, pts: &[(f64, f64)], color: &str, r: f64) {
    for &(x, y) in pts {
        let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="{r}" fill="{color}"/>"#, f.sx(x), f.sy(y));
    }
}

/// Entry `i` of a legend in the top right corner.
pub fn legend(s: &mut String, i: usize, name: &str, color: &str) {
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end" fill="{color}">{name}</text>"#, W - M, M + 14.0 * i as f64);
}

const COLORS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/// Several named curves against the step (each drawn as its moving average), one color each,
/// with a legend: e.g. the training loss of every arm of an experiment.
pub fn series_svg(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    curves_svg(&format!("{title} (moving average)"), series, true)
}

/// `series_svg` for sparse measurements (e.g. a validation loss every 50 steps): every point a
/// dot, joined as measured, without smoothing.
pub fn points_svg(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    curves_svg(title, series, false)
}

fn curves_svg(y_label: &str, series: &[(String, Vec<(f64, f64)>)], smooth: bool) -> String {
    let Some(f) = Frame::fit(series.iter().flat_map(|(_, p)| p.iter())) else { return empty("no steps") };
    let mut s = open();
    f.axes(&mut s, "optimizer step", y_label);
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        if smooth {
            polyline(&mut s, &f, &ema(&pts), color, 1.5, "");
        } else {
            polyline(&mut s, &f, &pts, color, 1.5, "");
            dots(&mut s, &f, &pts, color, 3.5);
        }
        legend(&mut s, i, name, color);
    }
    close(s)
}
