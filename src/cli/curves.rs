//! The training curves of a run: `curves.svg` in the run directory, drawn from
//! `metrics.jsonl` (every loss term, the learning rate and the gradient norm against
//! the step) and redrawn at each log interval, because curves are read at a glance
//! where JSON lines are not.

use super::error::CliResult;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use twinflow::engine::Error;

/// Keys of a metrics line that are not curves of the loss panel.
const NOT_LOSS: [&str; 5] = ["step", "lr", "grad_norm", "samples_per_sec", "skipped"];

/// Line colours of the loss terms, in order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One curve: its name and its finite (step, value) points.
type Curve = (String, Vec<(f64, f64)>);

/// Draws `dir/curves.svg` from `dir/metrics.jsonl` (written through a temporary file, so
/// a reader never sees half a picture); returns its path. Nothing to draw without
/// metrics lines.
pub fn write_curves(dir: &Path) -> CliResult<Option<PathBuf>> {
    let metrics = dir.join("metrics.jsonl");
    let Ok(text) = std::fs::read_to_string(&metrics) else {
        return Ok(None);
    };
    let curves = read_curves(&text);
    if curves.is_empty() {
        return Ok(None);
    }
    let path = dir.join("curves.svg");
    let tmp = dir.join("curves.svg.tmp");
    draw(&tmp, &curves).map_err(|e| format!("drawing {}: {e}", path.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("curves", &path, e))?;
    Ok(Some(path))
}

/// Every numeric key of the metrics lines as a curve against `step`, in first-seen
/// order (null, i.e. non-finite, values and unreadable lines skipped).
fn read_curves(text: &str) -> Vec<Curve> {
    let mut order: Vec<String> = Vec::new();
    let mut points: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(serde_json::Value::Object(record)) = serde_json::from_str(line) else {
            continue;
        };
        let Some(step) = record.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        for (key, value) in &record {
            let Some(v) = value.as_f64().filter(|v| v.is_finite()) else {
                continue;
            };
            if key == "step" || key == "samples_per_sec" {
                continue;
            }
            if !points.contains_key(key) {
                order.push(key.clone());
            }
            points.entry(key.clone()).or_default().push((step, v));
        }
    }
    order
        .into_iter()
        .map(|k| {
            let p = points.remove(&k).unwrap_or_default();
            (k, p)
        })
        .collect()
}

/// Three panels: the loss terms, the learning rate, the gradient norm.
fn draw(path: &Path, curves: &[Curve]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let losses: Vec<&Curve> = curves
        .iter()
        .filter(|(k, _)| !NOT_LOSS.contains(&k.as_str()))
        .collect();
    let named = |key: &str| curves.iter().filter(|(k, _)| k == key).collect::<Vec<_>>();
    panel(&panels[0], "loss terms", &losses)?;
    panel(&panels[1], "learning rate", &named("lr"))?;
    panel(
        &panels[2],
        "gradient norm (before clipping)",
        &named("grad_norm"),
    )?;
    root.present()?;
    Ok(())
}

/// One panel of `curves` against the step, with a legend when there are several.
fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    curves: &[&Curve],
) -> Result<(), Box<dyn std::error::Error>> {
    let all = curves.iter().flat_map(|(_, p)| p.iter());
    let (steps, values) = (all.clone().map(|p| p.0), all.map(|p| p.1));
    let (Some(x), Some(y)) = (span(steps), span(values)) else {
        return Ok(());
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?;
    chart.configure_mesh().x_desc("step").draw()?;
    for (i, (name, points)) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    if curves.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// The range of `values`, widened a little so lines do not sit on the frame; `None`
/// without values.
fn span(values: impl Iterator<Item = f64>) -> Option<Range<f64>> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return None;
    }
    // A flat curve (a constant learning rate) gets a band of ±10% around its value.
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        hi.abs().max(1e-12) * 0.1
    };
    Some(lo - pad..hi + pad)
}

#[cfg(test)]
mod tests {
    use super::read_curves;

    #[test]
    fn every_numeric_key_is_a_curve_in_first_seen_order() {
        let text = "{\"step\":1,\"loss\":2.0,\"base\":1.5,\"lr\":0.1,\"skipped\":false}\n\
                    torn line\n\
                    {\"step\":2,\"loss\":null,\"base\":1.0,\"lr\":0.2,\"samples_per_sec\":9}\n";
        let curves = read_curves(text);
        let names: Vec<&str> = curves.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["base", "loss", "lr"]);
        assert_eq!(curves[0].1, [(1.0, 1.5), (2.0, 1.0)]);
        assert_eq!(curves[1].1, [(1.0, 2.0)]);
    }
}
