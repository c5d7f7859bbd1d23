//! Text for the plots from a built-in 8×8 bitmap font (font8x8, public domain). plotters draws
//! text only through a font library (system fonts, or a TrueType file to embed); this keeps the
//! plot free of both and looks the same on every machine.

use plotters::coord::Shift;
use plotters::prelude::{DrawingArea, DrawingBackend, RGBColor};

/// Width in pixels of `text` drawn at `scale` (8 × scale per character).
pub fn width(text: &str, scale: i32) -> i32 {
    text.chars().count() as i32 * 8 * scale
}

/// Height in pixels of one line at `scale`.
pub fn height(scale: i32) -> i32 {
    8 * scale
}

/// Draws `text` with its top-left corner at `at`; characters outside ASCII show as `?`.
pub fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    at: (i32, i32),
    scale: i32,
    color: &RGBColor,
) -> Result<(), String> {
    let scale = scale.max(1);
    for (i, c) in text.chars().enumerate() {
        let code = if c.is_ascii() {
            c as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let x0 = at.0 + i as i32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let p = (x0 + col * scale + dx, at.1 + row as i32 * scale + dy);
                        area.draw_pixel(p, color).map_err(|e| e.to_string())?;
                    }
                }
            }
        }
    }
    Ok(())
}
