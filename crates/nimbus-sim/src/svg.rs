//! Hand-written inline SVG charts for the HTML report: horizontal bar charts (one bar per
//! policy) and line charts (one line per policy). No scripts, no external files.

use std::fmt::Write as _;

/// Series colors, in policy order (Tableau 10).
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// The color of series `i`.
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A short, fixed-format number: `0.123`, `0.2`, `12.35`, `1234`, `12.3k`, `50k`, `4.5M`.
pub fn num(v: f64) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
    let a = v.abs();
    if !v.is_finite() {
        "∞".into()
    } else if a == 0.0 {
        "0".into()
    } else if a >= 1e9 {
        format!("{}G", trim(format!("{:.1}", v / 1e9)))
    } else if a >= 1e6 {
        format!("{}M", trim(format!("{:.1}", v / 1e6)))
    } else if a >= 1e4 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim(format!("{v:.2}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

/// A "nice" axis maximum and step for data up to `max`: 1, 2 or 5 times a power of ten.
fn nice_axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.2);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// A horizontal bar chart: one `(label, value)` per bar, colored by position.
pub fn bar_chart(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let (w, label_w, bar_h, top) = (720.0, 230.0, 26.0, 34.0);
    let h = top + bar_h * bars.len() as f64 + 30.0;
    let max = bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (axis_max, step) = nice_axis(max);
    let plot_w = w - label_w - 70.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"><title>{t}</title><text x="0" y="18" class="title">{t}{u}</text>"#,
        t = esc(title),
        u = if unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", esc(unit))
        }
    );
    let mut tick = 0.0;
    while tick <= axis_max * (1.0 + 1e-9) {
        let x = label_w + plot_w * tick / axis_max;
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{y2:.1}" class="grid"/><text x="{x:.1}" y="{ty:.1}" class="tick" text-anchor="middle">{v}</text>"#,
            y2 = h - 26.0,
            ty = h - 12.0,
            v = num(tick)
        );
        tick += step;
    }
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = top + bar_h * i as f64;
        let bw = if v.is_finite() && axis_max > 0.0 {
            (plot_w * v / axis_max).max(0.0)
        } else {
            0.0
        };
        let _ = write!(
            s,
            r#"<text x="{lx:.1}" y="{ty:.1}" class="label" text-anchor="end">{l}</text><rect x="{label_w}" y="{ry:.1}" width="{bw:.1}" height="{rh:.1}" fill="{c}"><title>{l}: {vt}</title></rect><text x="{vx:.1}" y="{ty:.1}" class="value">{vs}</text>"#,
            lx = label_w - 8.0,
            ty = y + bar_h * 0.65,
            l = esc(label),
            ry = y + 4.0,
            rh = bar_h - 8.0,
            c = color(i),
            vx = label_w + bw + 6.0,
            vs = num(*v),
            vt = num(*v),
        );
    }
    s.push_str("</svg>");
    s
}

/// One line of a line chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with a legend; `y_max` fixes the y axis (e.g. 1 for fractions).
pub fn line_chart(title: &str, x_label: &str, series: &[Series<'_>], y_max: Option<f64>) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 300.0, 60.0, 20.0, 34.0, 44.0);
    let legend_h = 18.0 * series.len().div_ceil(3) as f64;
    let total_h = h + legend_h;
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all
        .clone()
        .map(|p| p.0)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let data_y = all
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (x_axis, x_step) = nice_axis(x_max);
    let (y_axis, y_step) = match y_max {
        Some(m) => (m, m / 5.0),
        None => nice_axis(data_y),
    };
    let pw = w - left - right;
    let ph = h - top - bottom;
    let sx = |x: f64| left + pw * (x / x_axis).clamp(0.0, 1.0);
    let sy = |y: f64| top + ph * (1.0 - (y / y_axis).clamp(0.0, 1.0));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {total_h}" width="{w}" height="{total_h}" role="img"><title>{t}</title><text x="0" y="18" class="title">{t}</text>"#,
        t = esc(title)
    );
    let mut v = 0.0;
    while v <= y_axis * (1.0 + 1e-9) {
        let y = sy(v);
        let _ = write!(
            s,
            r#"<line x1="{left}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" class="grid"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{l}</text>"#,
            x2 = w - right,
            tx = left - 6.0,
            ty = y + 4.0,
            l = num(v)
        );
        v += y_step;
    }
    let mut v = 0.0;
    while v <= x_axis * (1.0 + 1e-9) {
        let x = sx(v);
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{ty}" class="tick" text-anchor="middle">{l}</text>"#,
            ty = h - bottom + 16.0,
            l = num(v)
        );
        v += x_step;
    }
    let _ = write!(
        s,
        r#"<text x="{x:.1}" y="{y}" class="axis" text-anchor="middle">{l}</text>"#,
        x = left + pw / 2.0,
        y = h - 8.0,
        l = esc(x_label)
    );
    for (i, line) in series.iter().enumerate() {
        let mut pts = String::new();
        for &(x, y) in &line.points {
            if x.is_finite() && y.is_finite() {
                let _ = write!(pts, "{:.1},{:.1} ", sx(x), sy(y));
            }
        }
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.6"><title>{}</title></polyline>"#,
            pts.trim_end(),
            color(i),
            esc(line.name)
        );
        let (lx, ly) = (left + 220.0 * (i % 3) as f64, h + 18.0 * (i / 3) as f64);
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{ry}" width="12" height="4" fill="{c}"/><text x="{tx}" y="{ly}" class="label">{n}</text>"#,
            ry = ly - 6.0,
            c = color(i),
            tx = lx + 16.0,
            n = esc(line.name)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(7.3), (8.0, 2.0));
        assert_eq!(nice_axis(1.0), (1.0, 0.2));
        assert_eq!(nice_axis(420.0), (500.0, 100.0));
    }

    #[test]
    fn numbers_and_escaping() {
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(0.2), "0.2");
        assert_eq!(num(12.345), "12.35");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(1234.0), "1234");
        assert_eq!(num(12345.0), "12.3k");
        assert_eq!(num(50_000.0), "50k");
        assert_eq!(num(f64::INFINITY), "∞");
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn charts_are_svg() {
        let b = bar_chart("Wait", "s", &[("a".into(), 1.0), ("b<".into(), 3.0)]);
        assert!(b.starts_with("<svg") && b.ends_with("</svg>") && b.contains("b&lt;"));
        let l = line_chart(
            "CPU",
            "time (s)",
            &[Series {
                name: "x",
                points: vec![(0.0, 0.1), (10.0, 0.5)],
            }],
            Some(1.0),
        );
        assert!(l.contains("<polyline") && l.ends_with("</svg>"));
    }
}
