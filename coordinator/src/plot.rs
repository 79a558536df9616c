//! PNG plots of a run's or a comparison's curves (accuracy vs step, loss vs step, one line
//! per method), drawn with plotters' bitmap backend. Text uses a TrueType font found on the
//! system (DejaVu Sans); without one, the plot is drawn without labels rather than not at all.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

/// One line of a plot.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const FONT_PATHS: [&str; 3] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

/// Registers a system font once; false when none was found.
fn font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps fonts for the process's lifetime.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (looked for DejaVu Sans): plots are drawn without labels");
        false
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
