//! The chart of a report (`chart.svg` of `--report DIR`): one horizontal
//! bar per bench and param, grouped by group, of how many times better
//! multiproc is than Python (the ratio), on a log scale with a line at 1x.
//! A bar goes right of the line where multiproc is better (green, or amber
//! if one of the targets for the row is missed), left where it is
//! worse (red); a tick marks the target ratio, where there is one.
//!
//! Drawn with `plotters`' SVG backend and no font support: text goes into
//! the SVG as `<text>` elements that the viewer renders, so neither a font
//! file nor fontconfig is needed to build or run this. Text sizes are
//! estimated (plotters' built-in estimate, and this module's for the
//! label column), which is enough for a layout.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::markdown::{by_group, group_title};
use crate::report::{self, Row};
use crate::targets;

/// Chart width in pixels.
const WIDTH: u32 = 1000;
/// Height of one bar's line.
const LINE: u32 = 22;
/// Space above the plot: title, subtitle and legend.
const TOP: u32 = 86;
/// Space below the plot: the axis labels and their description.
const BOTTOM: u32 = 56;
/// Space right of the plot, for the value of a bar at the far right.
const RIGHT: u32 = 70;
/// Font size of labels, in pixels.
const FONT: f64 = 13.0;

/// Better than Python.
const BETTER: RGBColor = RGBColor(46, 139, 87);
/// Better than Python, but an issue's target for the row is missed.
const SHORT: RGBColor = RGBColor(230, 160, 40);
/// Worse than Python.
const WORSE: RGBColor = RGBColor(205, 60, 50);
/// Group bands, every other group.
const BAND: RGBColor = RGBColor(243, 245, 248);
/// Text and the 1x line.
const INK: RGBColor = RGBColor(30, 30, 30);
/// Secondary text.
const MUTED: RGBColor = RGBColor(100, 100, 100);

/// One line of the chart: a group heading, or a bar.
#[derive(Debug, Clone, PartialEq)]
enum Line {
    /// A group's heading.
    Group(String),
    /// A bench and param: its label, the ratio (if both sides were
    /// measured), the target ratios, and whether any of its
    /// targets (of whatever kind) is missed.
    Bar {
        label: String,
        ratio: Option<f64>,
        targets: Vec<f64>,
        missed: bool,
    },
}

/// The chart's lines for `rows`, top to bottom.
fn lines(rows: &[Row]) -> Vec<Line> {
    let mut out = Vec::new();
    for (group, rows) in by_group(rows) {
        out.push(Line::Group(group_title(&group)));
        for entry in report::entries(&rows) {
            let all = targets::targets_for(&group, &entry);
            let targets = all.iter().filter_map(|t| t.ratio()).collect();
            let missed = all.iter().any(|t| t.met(&entry) == Some(false));
            let label = if entry.param == "-" {
                entry.bench.to_string()
            } else {
                format!("{} {}", entry.bench, entry.param)
            };
            out.push(Line::Bar {
                label,
                ratio: entry.ratio(),
                targets,
                missed,
            });
        }
    }
    out
}

/// The x range: every ratio, target and 1x, with room on each side.
fn x_range(lines: &[Line]) -> (f64, f64) {
    let (mut lo, mut hi) = (1.0f64, 1.0f64);
    for line in lines {
        if let Line::Bar { ratio, targets, .. } = line {
            for &x in ratio.iter().chain(targets) {
                if x.is_finite() && x > 0.0 {
                    lo = lo.min(x);
                    hi = hi.max(x);
                }
            }
        }
    }
    // Room for the value beside the longest bar; the ends rounded to a
    // 1-2-5 step, so that they fall on the grid.
    (round_125(lo / 2.0, false), round_125(hi * 3.0, true))
}

/// The nearest of 1, 2, 5 times a power of ten above (`up`) or below `x`.
fn round_125(x: f64, up: bool) -> f64 {
    let decade = 10f64.powf(x.log10().floor());
    let steps = [1.0, 2.0, 5.0, 10.0];
    let step = if up {
        steps.iter().find(|&&s| s * decade >= x * (1.0 - 1e-9))
    } else {
        steps
            .iter()
            .rev()
            .find(|&&s| s * decade <= x * (1.0 + 1e-9))
    };
    step.copied().unwrap_or(1.0) * decade
}

/// An axis label: `0.1x`, `1x`, `1000x`.
fn tick(v: f64) -> String {
    format!("{}x", targets::number(v))
}

/// Estimated width in pixels of `text` at `px` pixels in a sans-serif
/// face (generous: most glyphs are narrower).
fn text_width(text: &str, px: f64) -> u32 {
    (text.chars().count() as f64 * px * 0.6).ceil() as u32
}

/// A sans-serif font of `px` pixels. (Plotters writes a font's size
/// divided by 1.24 into an SVG, hence the factor.)
fn font(px: f64) -> FontDesc<'static> {
    ("sans-serif", px * 1.24).into_font()
}

/// Renders the chart of `rows` as an SVG document. `subtitle` goes under
/// the title (the machine and the date, say).
pub fn render(rows: &[Row], subtitle: &str) -> Result<String, String> {
    let lines = lines(rows);
    let bars = lines
        .iter()
        .filter(|l| matches!(l, Line::Bar { .. }))
        .count();
    if bars == 0 {
        return Err("no results to chart".to_string());
    }
    let label_width = lines
        .iter()
        .map(|l| match l {
            Line::Group(t) => text_width(t, FONT + 1.0) + 4,
            Line::Bar { label, .. } => text_width(label, FONT) + 16,
        })
        .max()
        .unwrap_or(0)
        + 24;
    let n = lines.len();
    let height = TOP + BOTTOM + LINE * n as u32;
    let (lo, hi) = x_range(&lines);
    let mut svg = String::new();
    draw(
        &mut svg,
        (WIDTH, height),
        label_width,
        &lines,
        (lo, hi),
        subtitle,
    )
    .map_err(|e| format!("drawing the chart failed: {e}"))?;
    Ok(svg)
}

/// Draws `lines` into `svg`.
fn draw(
    svg: &mut String,
    size: (u32, u32),
    label_width: u32,
    lines: &[Line],
    (lo, hi): (f64, f64),
    subtitle: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, size).into_drawing_area();
    root.fill(&WHITE)?;
    let title = TextStyle::from(font(18.0)).color(&INK);
    root.draw(&Text::new(
        "multiproc against Python's multiprocessing: how many times better",
        (12, 10),
        title,
    ))?;
    let small = TextStyle::from(font(FONT)).color(&MUTED);
    root.draw(&Text::new(subtitle.to_string(), (12, 36), small.clone()))?;

    let n = lines.len() as f64;
    let plot = root.margin(TOP, 0, label_width, RIGHT);
    let mut chart = ChartBuilder::on(&plot)
        .x_label_area_size(BOTTOM)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..n)?;
    // Lines run top to bottom: line i spans [n - i - 1, n - i].
    let band = |i: usize| (n - i as f64 - 1.0, n - i as f64);

    // Every other group on a light band, drawn first, under the grid.
    let mut group_index = 0;
    let mut start = None;
    let mut bands = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Line::Group(_) = line {
            if let Some(s) = start.take() {
                bands.push((s, i, group_index));
                group_index += 1;
            }
            start = Some(i);
        }
    }
    if let Some(s) = start {
        bands.push((s, lines.len(), group_index));
    }
    chart.draw_series(
        bands.iter().filter(|b| b.2 % 2 == 0).map(|&(s, e, _)| {
            Rectangle::new([(lo, band(e - 1).0), (hi, band(s).1)], BAND.filled())
        }),
    )?;

    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_labels(12)
        .x_label_formatter(&|v| tick(*v))
        .x_label_style(font(FONT).color(&INK))
        .x_desc("how many times better than Python (log scale)")
        .axis_desc_style(font(FONT).color(&MUTED))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;

    let label_style = TextStyle::from(font(FONT))
        .color(&INK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    let group_style = TextStyle::from(font(FONT + 1.0).style(FontStyle::Bold))
        .color(&INK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let value_style = TextStyle::from(font(FONT - 1.0))
        .color(&INK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    // Pixel x of the plot's left edge and of the label column.
    let (left, _) = chart.backend_coord(&(lo, 0.0));
    for (i, line) in lines.iter().enumerate() {
        let (y0, y1) = band(i);
        let (_, y) = chart.backend_coord(&(lo, (y0 + y1) / 2.0));
        match line {
            Line::Group(title) => {
                root.draw(&Text::new(title.clone(), (12, y), group_style.clone()))?;
            }
            Line::Bar {
                label,
                ratio,
                targets,
                missed,
            } => {
                root.draw(&Text::new(
                    label.clone(),
                    (left - 8, y),
                    label_style.clone(),
                ))?;
                let value = match ratio {
                    Some(r) if *r > 0.0 => {
                        let r = r.clamp(lo, hi);
                        let color = match (r >= 1.0, missed) {
                            (false, _) => WORSE,
                            (true, true) => SHORT,
                            (true, false) => BETTER,
                        };
                        chart.draw_series(std::iter::once(Rectangle::new(
                            [(1.0, y0 + 0.18), (r, y1 - 0.18)],
                            color.filled(),
                        )))?;
                        format!("{:.2}x", ratio.unwrap_or(r))
                    }
                    _ => "n/a".to_string(),
                };
                for &t in targets {
                    chart.draw_series(std::iter::once(PathElement::new(
                        vec![(t, y0 + 0.05), (t, y1 - 0.05)],
                        INK.stroke_width(2),
                    )))?;
                }
                // The value right of the bar and of its target ticks.
                let end = targets
                    .iter()
                    .fold(ratio.unwrap_or(1.0).max(1.0), |a, &t| a.max(t * 1.05))
                    .clamp(lo, hi);
                let (x, _) = chart.backend_coord(&(end, y0));
                root.draw(&Text::new(value, (x + 5, y), value_style.clone()))?;
            }
        }
    }
    // The 1x line, over the bars.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, 0.0), (1.0, n)],
        INK.stroke_width(1),
    )))?;
    // Legend, under the subtitle: a key, then its text.
    let legend = [
        (BETTER, "better"),
        (SHORT, "better, target missed"),
        (WORSE, "worse than Python"),
        (INK, "issue's target"),
    ];
    let key = TextStyle::from(font(FONT - 1.0))
        .color(&MUTED)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let item = |what: &str| 17 + text_width(what, FONT - 1.0) as i32 + 12;
    let mut x = 12;
    for (color, what) in legend {
        if what == "issue's target" {
            root.draw(&PathElement::new(
                vec![(x + 6, 57), (x + 6, 71)],
                color.stroke_width(2),
            ))?;
        } else {
            root.draw(&Rectangle::new([(x, 59), (x + 12, 69)], color.filled()))?;
        }
        root.draw(&Text::new(what, (x + 17, 64), key.clone()))?;
        x += item(what);
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markdown::tests::sample_rows;

    #[test]
    fn lines_follow_groups_with_ratios_and_target_ticks() {
        let lines = lines(&sample_rows());
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], Line::Group("start (issue 2)".into()));
        let Line::Bar {
            label,
            ratio,
            targets,
            missed,
        } = &lines[1]
        else {
            panic!("{lines:?}");
        };
        assert_eq!(label, "start_join fork");
        assert!((ratio.unwrap() - 10.5).abs() < 1e-9);
        assert_eq!(targets, &[10.0]);
        assert!(!missed);
        // roundtrip_bytes: 2.1x python, target 2.5x.
        assert!(matches!(&lines[4], Line::Bar { missed: true, .. }));
        // Python unavailable: a bar with no ratio.
        assert!(matches!(&lines[5], Line::Bar { ratio: None, .. }));
        assert_eq!(x_range(&lines), (0.5, 100.0));
    }

    #[test]
    fn svg_has_bars_labels_and_text_without_fonts() {
        let svg = render(&sample_rows(), "2 cores, Some CPU").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "start (issue 2)",
            "pipe (issue 3)",
            "start_join fork",
            "roundtrip_bytes 8B",
            "10.50x",
            "n/a",
            "2 cores, Some CPU",
            "1x",
            "10x",
        ] {
            // Plotters puts a text element's content on a line of its own.
            assert!(
                svg.contains(&format!(">\n{text}\n</text>")),
                "no text {text:?}"
            );
        }
        // Four bars (rect elements beyond the background and bands) of two
        // colours.
        assert!(
            svg.contains("#2E8B57") || svg.contains("#2e8b57"),
            "no green bar"
        );
        assert!(svg.matches("<text").count() > 10);
    }

    #[test]
    fn nothing_to_chart_is_an_error() {
        assert!(render(&[], "").is_err());
    }
}
