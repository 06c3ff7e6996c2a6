//! The clinic page's charts, drawn by `plotters` into SVG text. Plotters
//! escapes every text it writes (a caption holds a clinic's name, which a
//! registry admin typed); the page places the SVG in a figure whose caption
//! names it, next to a table of the same figures.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

/// A chart's size in SVG units; the style sheet scales it to the page.
const SIZE: (u32, u32) = (720, 280);
/// The console's accent, for bars and lines.
const ACCENT: RGBColor = RGBColor(11, 92, 173);
/// The rule's line.
const LIMIT: RGBColor = RGBColor(164, 14, 38);
/// Axis and label text.
const TEXT: RGBColor = RGBColor(27, 31, 36);
const FONT: &str = "sans-serif";

/// Why plotters could not draw a chart.
#[derive(Debug, thiserror::Error)]
#[error("chart: {0}")]
pub struct ChartError(String);

fn failed(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

/// Names the chart for assistive technology by the element `labelled_by`
/// (the figure's caption), as an image.
fn labelled(svg: String, labelled_by: &str) -> String {
    svg.replacen(
        "<svg ",
        &format!(r#"<svg role="img" aria-labelledby="{labelled_by}" "#),
        1,
    )
}

/// Only every `step`-th label of `n`, so that they do not overlap.
fn label_step(n: usize) -> usize {
    n.div_ceil(12).max(1)
}

/// A bar per label: `values[i]` above `labels[i]`.
pub fn bars(
    caption: &str,
    y_desc: &str,
    labels: &[String],
    values: &[i64],
    labelled_by: &str,
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let n = u32::try_from(labels.len().max(1)).unwrap_or(u32::MAX);
        let max = values.iter().copied().max().unwrap_or(0).max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (FONT, 18).into_font().color(&TEXT))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((0u32..n).into_segmented(), 0i64..(max + max / 8 + 1))
            .map_err(failed)?;
        let step = label_step(labels.len());
        let formatter = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) if (*i as usize) % step == 0 => {
                labels.get(*i as usize).cloned().unwrap_or_default()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len().max(1))
            .x_label_formatter(&formatter)
            .y_desc(y_desc)
            .label_style((FONT, 13).into_font().color(&TEXT))
            .axis_desc_style((FONT, 13).into_font().color(&TEXT))
            .draw()
            .map_err(failed)?;
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(ACCENT.filled())
                    .margin(2)
                    .data(
                        values
                            .iter()
                            .enumerate()
                            .map(|(i, v)| (u32::try_from(i).unwrap_or(u32::MAX), *v)),
                    ),
            )
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(labelled(svg, labelled_by))
}

/// A share (0–1) per month as a line of points, months without a share
/// left out, against the rule's `limit`.
pub fn share_line(
    caption: &str,
    labels: &[String],
    shares: &[Option<f64>],
    limit: f64,
    labelled_by: &str,
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let n = labels.len().max(1);
        let top = shares
            .iter()
            .flatten()
            .copied()
            .fold(limit * 2.0, f64::max)
            .min(1.0)
            * 100.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (FONT, 18).into_font().color(&TEXT))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..(n as f64 - 0.5), 0f64..top * 1.1)
            .map_err(failed)?;
        let step = label_step(labels.len());
        let formatter = |x: &f64| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            let i = i as usize;
            if i % step == 0 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len().max(1))
            .x_label_formatter(&formatter)
            .y_label_formatter(&|y| format!("{y:.0}%"))
            .y_desc("non-resident share, %")
            .label_style((FONT, 13).into_font().color(&TEXT))
            .axis_desc_style((FONT, 13).into_font().color(&TEXT))
            .draw()
            .map_err(failed)?;
        let limit_pct = limit * 100.0;
        chart
            .draw_series(LineSeries::new(
                [(0.0, limit_pct), (n as f64 - 1.0, limit_pct)],
                LIMIT.stroke_width(2),
            ))
            .map_err(failed)?
            .label(format!("the rule's line, {limit_pct:.0}%"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], LIMIT.stroke_width(2)));
        let points: Vec<(f64, f64)> = shares
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i as f64, s * 100.0)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, ACCENT.stroke_width(2)).point_size(3))
            .map_err(failed)?
            .label("share of deceased-donor transplants to non-residents")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], ACCENT.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(TEXT)
            .label_font((FONT, 13).into_font().color(&TEXT))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(labelled(svg, labelled_by))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_typed_is_drawn_as_text() {
        let hostile = r#"<script>alert(1)</script>"onmouseover="x"#;
        let svg = bars(hostile, "n", &[hostile.to_owned()], &[3], "c").unwrap();
        assert!(!svg.contains("<script"), "{svg}");
        assert!(!svg.contains(r#""onmouseover"#), "{svg}");
        assert!(svg.contains("&lt;script&gt;"));
        assert!(svg.starts_with(r#"<svg role="img" aria-labelledby="c" "#));
        let line = share_line(hostile, &[hostile.to_owned()], &[Some(0.2)], 0.05, "d").unwrap();
        assert!(!line.contains("<script"));
        assert!(line.contains("the rule&apos;s line") || line.contains("the rule's line"));
    }

    #[test]
    fn empty_charts_still_draw() {
        assert!(bars("c", "n", &[], &[], "x").is_ok());
        assert!(share_line("c", &[], &[], 0.05, "x").is_ok());
    }
}
