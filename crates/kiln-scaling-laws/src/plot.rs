//! SVG plots of inference-demand sweeps (feature `plot`).

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::inference::InferenceOptimum;

/// Renders a sweep from [`sweep`](crate::inference::sweep) as an SVG document: optimal parameters
/// (top) and training tokens (bottom) against lifetime inference demand, each beside the
/// Chinchilla-style model of the same loss. Points with zero demand are left out (log axis).
///
/// # Errors
/// [`Error::Plot`] if fewer than two points have a positive demand, or if drawing fails.
pub fn sweep_svg(points: &[InferenceOptimum], title: &str) -> Result<String> {
    let pts: Vec<&InferenceOptimum> = points.iter().filter(|p| p.inference_tokens > 0.0).collect();
    if pts.len() < 2 {
        return Err(Error::Plot {
            message: format!(
                "a sweep plot needs at least 2 points with a positive inference demand, got {}",
                pts.len()
            ),
        });
    }
    let mut svg = String::new();
    draw(&pts, title, &mut svg).map_err(|message| Error::Plot { message })?;
    Ok(svg)
}

fn draw(
    pts: &[&InferenceOptimum],
    title: &str,
    svg: &mut String,
) -> std::result::Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::with_string(svg, (900, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(370);
    let x0 = pts.first().map_or(1.0, |p| p.inference_tokens);
    let x1 = pts.last().map_or(10.0, |p| p.inference_tokens);

    type Series = (
        &'static str,
        fn(&InferenceOptimum) -> f64,
        fn(&InferenceOptimum) -> f64,
    );
    // N falls and D_train rises with demand: put each legend where its curve is not.
    let panels: [(
        DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        Series,
        SeriesLabelPosition,
    ); 2] = [
        (
            top,
            (
                "parameters N",
                |p| p.optimal.n_params,
                |p| p.chinchilla.n_params,
            ),
            SeriesLabelPosition::LowerLeft,
        ),
        (
            bottom,
            (
                "training tokens D_train",
                |p| p.optimal.train_tokens,
                |p| p.chinchilla.train_tokens,
            ),
            SeriesLabelPosition::UpperLeft,
        ),
    ];
    for (area, (label, optimal, chinchilla), legend) in panels {
        let values: Vec<f64> = pts
            .iter()
            .flat_map(|p| [optimal(p), chinchilla(p)])
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min) / 1.3;
        let hi = values.iter().copied().fold(0.0, f64::max) * 1.3;
        let mut chart = ChartBuilder::on(&area)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d((x0..x1).log_scale(), (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("lifetime inference demand (tokens)")
            .y_desc(label)
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.inference_tokens, optimal(p))),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label("inference-aware optimum")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.inference_tokens, chinchilla(p))),
                RED.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label("Chinchilla-style, same loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChinchillaLaw, inference};

    #[test]
    fn renders_both_panels() {
        let law = ChinchillaLaw::sardana();
        let ts = inference::log_space(1e10, 1e14, 5).unwrap();
        let sweep = inference::sweep(&law, 2.0, &ts).unwrap();
        let svg = sweep_svg(&sweep, "loss 2.0").unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("training tokens D_train") && svg.contains("inference-aware optimum"));
        assert!(sweep_svg(&sweep[..1], "x").is_err());
    }
}
