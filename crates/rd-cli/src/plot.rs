//! ROC and PRO curves as PNG images (pure Rust; the font is embedded in the binary).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Plots over this many points are thinned (evenly, keeping both ends): curves are monotone and
/// a picture cannot show more.
const MAX_POINTS: usize = 4000;

/// One curve: its legend and points.
pub struct Curve<'a> {
    /// Legend text.
    pub label: String,
    /// x values.
    pub x: &'a [f32],
    /// y values.
    pub y: &'a [f32],
}

/// How a plot looks.
pub struct PlotSpec<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// x-axis caption.
    pub x_label: &'a str,
    /// y-axis caption.
    pub y_label: &'a str,
    /// Right end of the x axis (0.3 for a PRO curve up to FPR 0.3).
    pub x_max: f32,
    /// Draw the chance diagonal y = x.
    pub diagonal: bool,
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        )
        .is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| anyhow!("the embedded plot font could not be loaded"))
}

fn thin(x: &[f32], y: &[f32]) -> Vec<(f32, f32)> {
    let n = x.len().min(y.len());
    if n <= MAX_POINTS {
        return x.iter().copied().zip(y.iter().copied()).take(n).collect();
    }
    let step = n as f64 / MAX_POINTS as f64;
    let mut pts: Vec<(f32, f32)> = (0..MAX_POINTS)
        .map(|i| {
            let k = ((i as f64 * step) as usize).min(n - 1);
            (x[k], y[k])
        })
        .collect();
    pts.push((x[n - 1], y[n - 1]));
    pts
}

/// Draws `curves` into a 640×480 PNG at `path`.
pub fn save_curves(path: &Path, spec: &PlotSpec, curves: &[Curve]) -> Result<()> {
    register_font()?;
    let (w, h) = (640u32, 480u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let draw = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(spec.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(52)
            .build_cartesian_2d(0f32..spec.x_max, 0f32..1.0f32)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc(spec.x_label)
            .y_desc(spec.y_label)
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| draw(&e))?;
        if spec.diagonal {
            let d = spec.x_max.min(1.0);
            chart
                .draw_series(LineSeries::new([(0.0, 0.0), (d, d)], BLACK.mix(0.3)))
                .map_err(|e| draw(&e))?;
        }
        let colours = [
            RGBColor(31, 119, 180),
            RGBColor(214, 39, 40),
            RGBColor(44, 160, 44),
        ];
        for (i, c) in curves.iter().enumerate() {
            let colour = colours[i % colours.len()];
            chart
                .draw_series(LineSeries::new(thin(c.x, c.y), colour.stroke_width(2)))
                .map_err(|e| draw(&e))?
                .label(c.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("plot buffer has the wrong size")?;
    img.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
