//! PNG plots of a run's or a comparison's curves (accuracy vs step, loss vs step, one line
//! per method), drawn with plotters' bitmap backend and a font embedded in the binary.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

/// One line of a plot.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Registers the embedded font once (Ubuntu Light from egui's `epaint_default_fonts`, compiled
/// into the binary): labels render the same in a slim container image as on a desktop.
fn font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let ok = plotters::style::register_font("sans-serif", FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT).is_ok();
        if !ok {
            tracing::warn!("the embedded font did not load: plots are drawn without labels");
        }
        ok
    })
}

const COLORS: [RGBColor; 6] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

/// Draws `panels` side by side (title, y label, series) into one PNG.
pub fn curves(path: &Path, panels: &[(&str, &str, &[Series])]) -> Result<(), String> {
    let labels = font();
    let width = 640 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 440)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, (title, ylabel, series)) in areas.iter().zip(panels) {
        let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let ys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|y| y.is_finite()).collect();
        let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let (y0, y1) = ys.iter().fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
        if x0 > x1 || y0 > y1 {
            continue;
        }
        let pad = ((y1 - y0) * 0.08).max(1e-3);
        let mut b = ChartBuilder::on(area);
        b.margin(18).x_label_area_size(if labels { 36 } else { 8 }).y_label_area_size(if labels { 56 } else { 8 });
        if labels {
            b.caption(*title, ("sans-serif", 20));
        }
        let mut chart = b.build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad)).map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(RGBColor(235, 235, 235));
        if labels {
            mesh.x_desc("step").y_desc(*ylabel).label_style(("sans-serif", 14));
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| err(&e))?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite()).collect();
            let drawn = chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(|e| err(&e))?;
            if labels {
                drawn.label(s.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
        }
        if labels {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dark pixels (text, axes, lines) inside a rectangle of the PNG.
    fn dark(img: &image::RgbImage, xs: std::ops::Range<u32>, ys: std::ops::Range<u32>) -> usize {
        ys.flat_map(|y| xs.clone().map(move |x| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100)).count()
    }

    fn draw(title: &str) -> image::RgbImage {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.png");
        let s = [Series { name: "lora".into(), points: vec![(0.0, 0.5), (10.0, 0.7), (20.0, 0.9)] }];
        curves(&path, &[(title, "accuracy", &s)]).unwrap();
        image::open(&path).unwrap().to_rgb8()
    }

    #[test]
    fn titles_and_axis_labels_render_with_the_embedded_font() {
        let a = draw("SST-2 accuracy");
        // The title band and the y-axis label band hold glyphs; plotters draws nothing there
        // without a font.
        assert!(dark(&a, 0..640, 0..40) > 100, "no title drawn");
        assert!(dark(&a, 0..60, 60..400) > 100, "no y-axis labels drawn");
        // Different text, different pixels: the glyphs are the title's.
        let b = draw("loss");
        let band =
            |img: &image::RgbImage| (0..40).flat_map(|y| (0..640).map(move |x| (x, y))).map(|(x, y)| img.get_pixel(x, y).0).collect::<Vec<_>>();
        assert_ne!(band(&a), band(&b));
    }
}
