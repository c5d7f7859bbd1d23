//! The report's picture: cumulative IP bytes received per node against seconds from the links'
//! start, outages shaded, the TCP reference dashed. Drawn with plotters into an RGB buffer and
//! encoded by the png crate (plotters' own encoder would bring the whole `image` crate).

use std::io::BufWriter;
use std::path::Path;

use plotters::prelude::*;

use super::error::ScenarioError;
use super::text;

const W: u32 = 1200;
const H: u32 = 720;
const LEFT: i32 = 110;
const RIGHT: i32 = 30;
const BOTTOM: i32 = 70;

/// One line of the plot.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub t: Vec<f64>,
    pub bytes: Vec<u64>,
    pub dashed: bool,
}

#[derive(Debug, Clone)]
pub struct Plot {
    pub title: String,
    /// Lines under the title (small print).
    pub subtitle: Vec<String>,
    pub curves: Vec<Curve>,
    /// `(from, to)` seconds, shaded.
    pub outages: Vec<(f64, f64)>,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// A step of 1, 2 or 5 × 10^k giving at most about `n` ticks up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// A tick label without useless decimals.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

impl Plot {
    /// Draws the plot into `path` as PNG.
    pub fn write_png(&self, path: &Path) -> Result<(), ScenarioError> {
        let mut buf = vec![255u8; (W * H * 3) as usize];
        self.draw(&mut buf).map_err(ScenarioError::Plot)?;
        let f = std::fs::File::create(path).map_err(|e| ScenarioError::io("creating", path, e))?;
        let mut enc = png::Encoder::new(BufWriter::new(f), W, H);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| ScenarioError::Plot(e.to_string()))?;
        w.write_image_data(&buf)
            .map_err(|e| ScenarioError::Plot(e.to_string()))?;
        w.finish().map_err(|e| ScenarioError::Plot(e.to_string()))
    }

    fn draw(&self, buf: &mut [u8]) -> Result<(), String> {
        let root = BitMapBackend::with_buffer(buf, (W, H)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let xmax = self
            .curves
            .iter()
            .filter_map(|c| c.t.last().copied())
            .fold(1.0f64, f64::max);
        let bmax = self
            .curves
            .iter()
            .flat_map(|c| c.bytes.iter().copied())
            .max()
            .unwrap_or(0) as f64;
        let (unit, div) = if bmax >= 1e6 {
            ("MB", 1e6)
        } else {
            ("kB", 1e3)
        };
        let ymax = (bmax / div * 1.08).max(0.01);
        // Title, the subtitle's lines, then room for the y axis' unit.
        let top = 40 + 12 * self.subtitle.len() as i32 + 30;
        let mut chart = ChartBuilder::on(&root)
            .margin_left(LEFT as u32)
            .margin_right(RIGHT as u32)
            .margin_top(top as u32)
            .margin_bottom(BOTTOM as u32)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(e)?;
        let shade = RGBColor(255, 215, 215).filled();
        chart
            .draw_series(
                self.outages.iter().map(|&(a, b)| {
                    Rectangle::new([(a.min(xmax), 0.0), (b.min(xmax), ymax)], shade)
                }),
            )
            .map_err(e)?;
        let grid = RGBColor(225, 225, 225);
        let (xs, ys) = (nice_step(xmax, 10.0), nice_step(ymax, 8.0));
        let xticks: Vec<f64> = (0..)
            .map(|i| i as f64 * xs)
            .take_while(|x| *x <= xmax)
            .collect();
        let yticks: Vec<f64> = (0..)
            .map(|i| i as f64 * ys)
            .take_while(|y| *y <= ymax)
            .collect();
        for &x in &xticks {
            chart
                .draw_series(LineSeries::new([(x, 0.0), (x, ymax)], &grid))
                .map_err(e)?;
        }
        for &y in &yticks {
            chart
                .draw_series(LineSeries::new([(0.0, y), (xmax, y)], &grid))
                .map_err(e)?;
        }
        chart
            .draw_series(LineSeries::new(
                [(0.0, ymax), (0.0, 0.0), (xmax, 0.0)],
                BLACK.stroke_width(2),
            ))
            .map_err(e)?;
        for (i, c) in self.curves.iter().enumerate() {
            let style = PALETTE[i % PALETTE.len()].stroke_width(2);
            let pts: Vec<(f64, f64)> =
                c.t.iter()
                    .zip(&c.bytes)
                    .map(|(&t, &b)| (t, b as f64 / div))
                    .collect();
            if c.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts, 12, 8, style))
                    .map_err(e)?;
            } else {
                chart.draw_series(LineSeries::new(pts, style)).map_err(e)?;
            }
        }
        // Labels, in pixels (the chart maps values to pixels).
        let ink = RGBColor(30, 30, 30);
        for &x in &xticks {
            let (px, py) = chart.backend_coord(&(x, 0.0));
            let l = tick_label(x, xs);
            text::draw(&root, &l, (px - text::width(&l, 2) / 2, py + 8), 2, &ink)?;
        }
        for &y in &yticks {
            let (px, py) = chart.backend_coord(&(0.0, y));
            let l = tick_label(y, ys);
            let at = (px - 8 - text::width(&l, 2), py - text::height(2) / 2);
            text::draw(&root, &l, at, 2, &ink)?;
        }
        let xl = "seconds from the links' start";
        let bottom = H as i32 - BOTTOM + 34;
        let x_mid = LEFT + (W as i32 - LEFT - RIGHT) / 2 - text::width(xl, 2) / 2;
        text::draw(&root, xl, (x_mid, bottom), 2, &ink)?;
        let yl = format!("{unit} received");
        text::draw(&root, &yl, (10, top - 24), 2, &ink)?;
        text::draw(&root, &self.title, (20, 12), 2, &ink)?;
        for (i, line) in self.subtitle.iter().enumerate() {
            text::draw(&root, line, (20, 36 + 12 * i as i32), 1, &ink)?;
        }
        self.legend(&root, top, &ink)
    }

    /// The legend: a box in the plot's top-left corner.
    fn legend<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        top: i32,
        ink: &RGBColor,
    ) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        let mut entries: Vec<(String, Option<(RGBColor, bool)>)> = self
            .curves
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    c.label.clone(),
                    Some((PALETTE[i % PALETTE.len()], c.dashed)),
                )
            })
            .collect();
        if !self.outages.is_empty() {
            entries.push(("link outage".into(), None));
        }
        let line_h = 22;
        let wmax = entries
            .iter()
            .map(|(l, _)| text::width(l, 2))
            .max()
            .unwrap_or(0);
        let (x0, y0) = (LEFT + 14, top + 10);
        let x1 = x0 + 60 + wmax + 10;
        let y1 = y0 + line_h * entries.len() as i32 + 8;
        root.draw(&Rectangle::new([(x0, y0), (x1, y1)], WHITE.filled()))
            .map_err(e)?;
        root.draw(&Rectangle::new([(x0, y0), (x1, y1)], BLACK.stroke_width(1)))
            .map_err(e)?;
        for (i, (label, mark)) in entries.iter().enumerate() {
            let y = y0 + 8 + i as i32 * line_h;
            let mid = y + text::height(2) / 2;
            match mark {
                Some((color, dashed)) => {
                    let segs: &[(i32, i32)] = if *dashed {
                        &[(0, 12), (20, 32), (40, 48)]
                    } else {
                        &[(0, 48)]
                    };
                    for &(a, b) in segs {
                        root.draw(&PathElement::new(
                            vec![(x0 + 6 + a, mid), (x0 + 6 + b, mid)],
                            color.stroke_width(3),
                        ))
                        .map_err(e)?;
                    }
                }
                None => {
                    root.draw(&Rectangle::new(
                        [(x0 + 6, y), (x0 + 54, y + text::height(2))],
                        RGBColor(255, 215, 215).filled(),
                    ))
                    .map_err(e)?;
                }
            }
            text::draw(root, label, (x0 + 60, y), 2, ink)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(600.0, 10.0), 100.0);
        assert_eq!(nice_step(55.0, 8.0), 10.0);
        assert_eq!(nice_step(1.4, 8.0), 0.2);
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(300.0, 100.0), "300");
    }

    #[test]
    fn writes_a_png() {
        let dir = std::env::temp_dir().join(format!("zdn-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("p.png");
        Plot {
            title: "test: bytes".into(),
            subtitle: vec!["1 Mbit/s".into(), "second line".into()],
            curves: vec![
                Curve {
                    label: "station".into(),
                    t: vec![0.0, 1.0, 2.0],
                    bytes: vec![0, 500_000, 2_000_000],
                    dashed: false,
                },
                Curve {
                    label: "TCP reference".into(),
                    t: vec![0.0, 1.0, 2.0],
                    bytes: vec![0, 400_000, 1_900_000],
                    dashed: true,
                },
            ],
            outages: vec![(0.5, 1.0)],
        }
        .write_png(&p)
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
