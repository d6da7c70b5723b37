//! Words and scales on vlm's pictures (issue 23: "the pictures have no words"): a 5×7 bitmap font
//! built in (no system fonts, nothing to install), captions, a colour scale bar, and the contact
//! sheet that `vlm explain --montage` and `vlm search --montage` both lay out ([`Sheet`]).
//!
//! Text is ASCII: any other character is drawn as `?` (file names and labels in other scripts
//! stay readable in the JSON records, which the pictures do not replace).

use image::RgbImage;

use super::overlay::viridis;

/// A glyph's size in font pixels; each advances by [`ADVANCE`] (one column of spacing).
pub(crate) const GLYPH_W: u32 = 5;
pub(crate) const GLYPH_H: u32 = 7;
pub(crate) const ADVANCE: u32 = GLYPH_W + 1;
/// A line of text, in font pixels: the glyph and three rows of spacing.
pub(crate) const LINE_H: u32 = GLYPH_H + 3;

/// The printable ASCII characters, space (0x20) to `~` (0x7e): five columns each, bit 0 the top
/// row. The classic public-domain 5×7 LCD font.
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], // space
    [0x00, 0x00, 0x5F, 0x00, 0x00], // !
    [0x00, 0x07, 0x00, 0x07, 0x00], // "
    [0x14, 0x7F, 0x14, 0x7F, 0x14], // #
    [0x24, 0x2A, 0x7F, 0x2A, 0x12], // $
    [0x23, 0x13, 0x08, 0x64, 0x62], // %
    [0x36, 0x49, 0x55, 0x22, 0x50], // &
    [0x00, 0x05, 0x03, 0x00, 0x00], // '
    [0x00, 0x1C, 0x22, 0x41, 0x00], // (
    [0x00, 0x41, 0x22, 0x1C, 0x00], // )
    [0x08, 0x2A, 0x1C, 0x2A, 0x08], // *
    [0x08, 0x08, 0x3E, 0x08, 0x08], // +
    [0x00, 0x50, 0x30, 0x00, 0x00], // ,
    [0x08, 0x08, 0x08, 0x08, 0x08], // -
    [0x00, 0x60, 0x60, 0x00, 0x00], // .
    [0x20, 0x10, 0x08, 0x04, 0x02], // /
    [0x3E, 0x51, 0x49, 0x45, 0x3E], // 0
    [0x00, 0x42, 0x7F, 0x40, 0x00], // 1
    [0x42, 0x61, 0x51, 0x49, 0x46], // 2
    [0x21, 0x41, 0x45, 0x4B, 0x31], // 3
    [0x18, 0x14, 0x12, 0x7F, 0x10], // 4
    [0x27, 0x45, 0x45, 0x45, 0x39], // 5
    [0x3C, 0x4A, 0x49, 0x49, 0x30], // 6
    [0x01, 0x71, 0x09, 0x05, 0x03], // 7
    [0x36, 0x49, 0x49, 0x49, 0x36], // 8
    [0x06, 0x49, 0x49, 0x29, 0x1E], // 9
    [0x00, 0x36, 0x36, 0x00, 0x00], // :
    [0x00, 0x56, 0x36, 0x00, 0x00], // ;
    [0x00, 0x08, 0x14, 0x22, 0x41], // <
    [0x14, 0x14, 0x14, 0x14, 0x14], // =
    [0x41, 0x22, 0x14, 0x08, 0x00], // >
    [0x02, 0x01, 0x51, 0x09, 0x06], // ?
    [0x32, 0x49, 0x79, 0x41, 0x3E], // @
    [0x7E, 0x11, 0x11, 0x11, 0x7E], // A
    [0x7F, 0x49, 0x49, 0x49, 0x36], // B
    [0x3E, 0x41, 0x41, 0x41, 0x22], // C
    [0x7F, 0x41, 0x41, 0x22, 0x1C], // D
    [0x7F, 0x49, 0x49, 0x49, 0x41], // E
    [0x7F, 0x09, 0x09, 0x01, 0x01], // F
    [0x3E, 0x41, 0x41, 0x51, 0x32], // G
    [0x7F, 0x08, 0x08, 0x08, 0x7F], // H
    [0x00, 0x41, 0x7F, 0x41, 0x00], // I
    [0x20, 0x40, 0x41, 0x3F, 0x01], // J
    [0x7F, 0x08, 0x14, 0x22, 0x41], // K
    [0x7F, 0x40, 0x40, 0x40, 0x40], // L
    [0x7F, 0x02, 0x04, 0x02, 0x7F], // M
    [0x7F, 0x04, 0x08, 0x10, 0x7F], // N
    [0x3E, 0x41, 0x41, 0x41, 0x3E], // O
    [0x7F, 0x09, 0x09, 0x09, 0x06], // P
    [0x3E, 0x41, 0x51, 0x21, 0x5E], // Q
    [0x7F, 0x09, 0x19, 0x29, 0x46], // R
    [0x46, 0x49, 0x49, 0x49, 0x31], // S
    [0x01, 0x01, 0x7F, 0x01, 0x01], // T
    [0x3F, 0x40, 0x40, 0x40, 0x3F], // U
    [0x1F, 0x20, 0x40, 0x20, 0x1F], // V
    [0x7F, 0x20, 0x18, 0x20, 0x7F], // W
    [0x63, 0x14, 0x08, 0x14, 0x63], // X
    [0x03, 0x04, 0x78, 0x04, 0x03], // Y
    [0x61, 0x51, 0x49, 0x45, 0x43], // Z
    [0x00, 0x00, 0x7F, 0x41, 0x41], // [
    [0x02, 0x04, 0x08, 0x10, 0x20], // backslash
    [0x41, 0x41, 0x7F, 0x00, 0x00], // ]
    [0x04, 0x02, 0x01, 0x02, 0x04], // ^
    [0x40, 0x40, 0x40, 0x40, 0x40], // _
    [0x00, 0x01, 0x02, 0x04, 0x00], // `
    [0x20, 0x54, 0x54, 0x54, 0x78], // a
    [0x7F, 0x48, 0x44, 0x44, 0x38], // b
    [0x38, 0x44, 0x44, 0x44, 0x20], // c
    [0x38, 0x44, 0x44, 0x48, 0x7F], // d
    [0x38, 0x54, 0x54, 0x54, 0x18], // e
    [0x08, 0x7E, 0x09, 0x01, 0x02], // f
    [0x08, 0x14, 0x54, 0x54, 0x3C], // g
    [0x7F, 0x08, 0x04, 0x04, 0x78], // h
    [0x00, 0x44, 0x7D, 0x40, 0x00], // i
    [0x20, 0x40, 0x44, 0x3D, 0x00], // j
    [0x00, 0x7F, 0x10, 0x28, 0x44], // k
    [0x00, 0x41, 0x7F, 0x40, 0x00], // l
    [0x7C, 0x04, 0x18, 0x04, 0x78], // m
    [0x7C, 0x08, 0x04, 0x04, 0x78], // n
    [0x38, 0x44, 0x44, 0x44, 0x38], // o
    [0x7C, 0x14, 0x14, 0x14, 0x08], // p
    [0x08, 0x14, 0x14, 0x18, 0x7C], // q
    [0x7C, 0x08, 0x04, 0x04, 0x08], // r
    [0x48, 0x54, 0x54, 0x54, 0x20], // s
    [0x04, 0x3F, 0x44, 0x40, 0x20], // t
    [0x3C, 0x40, 0x40, 0x20, 0x7C], // u
    [0x1C, 0x20, 0x40, 0x20, 0x1C], // v
    [0x3C, 0x40, 0x30, 0x40, 0x3C], // w
    [0x44, 0x28, 0x10, 0x28, 0x44], // x
    [0x0C, 0x50, 0x50, 0x50, 0x3C], // y
    [0x44, 0x64, 0x54, 0x4C, 0x44], // z
    [0x00, 0x08, 0x36, 0x41, 0x00], // {
    [0x00, 0x00, 0x7F, 0x00, 0x00], // |
    [0x00, 0x41, 0x36, 0x08, 0x00], // }
    [0x08, 0x04, 0x08, 0x10, 0x08], // ~
];

/// The text colour, and the backing that keeps it readable over any photo.
pub(crate) const INK: [u8; 3] = [255, 255, 255];
/// What is left of the photo's brightness under a caption.
const BAND_DIM: f32 = 0.25;

/// The columns of `c`'s glyph (`?` for anything outside printable ASCII).
fn glyph(c: char) -> [u8; 5] {
    let i = match c {
        ' '..='~' => c as usize - ' ' as usize,
        _ => '?' as usize - ' ' as usize,
    };
    FONT.get(i).copied().unwrap_or([0; 5])
}

/// How wide `text` is drawn at `scale`, in pixels (no spacing after the last glyph).
pub(crate) fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    (n * ADVANCE).saturating_sub(1) * scale
}

/// `text` cut to fit `width` pixels at `scale`, ending in `..` when cut.
pub(crate) fn fit(text: &str, width: u32, scale: u32) -> String {
    if text_width(text, scale) <= width {
        return text.to_string();
    }
    let room = (width / scale + 1) / ADVANCE;
    let keep = room.saturating_sub(2) as usize;
    let mut out: String = text.chars().take(keep).collect();
    if room >= 2 {
        out.push_str("..");
    }
    out
}

/// Draws `text` with its top-left corner at (`x`, `y`), each font pixel a `scale`×`scale`
/// square; what falls outside the image is clipped.
pub(crate) fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, ink: [u8; 3]) {
    let s = i64::from(scale.max(1));
    for (i, c) in text.chars().enumerate() {
        let left = x + i as i64 * i64::from(ADVANCE) * s;
        for (col, bits) in glyph(c).iter().enumerate() {
            for row in 0..GLYPH_H {
                if (bits >> row) & 1 == 1 {
                    fill(
                        img,
                        left + col as i64 * s,
                        y + i64::from(row) * s,
                        s,
                        s,
                        ink,
                    );
                }
            }
        }
    }
}

/// Fills a rectangle, clipped to the image.
fn fill(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, colour: [u8; 3]) {
    let (iw, ih) = (i64::from(img.width()), i64::from(img.height()));
    for py in y.max(0)..(y + h).min(ih) {
        for px in x.max(0)..(x + w).min(iw) {
            img.put_pixel(px as u32, py as u32, image::Rgb(colour));
        }
    }
}

/// A number as the pictures print it: three decimals.
pub(crate) fn number(x: f32) -> String {
    format!("{x:.3}")
}

/// A colour scale: `LOW`, the colour map from left to right, `HIGH`, in one line of text height,
/// starting at (`x`, `y`), at most `width` wide. Returns the width used (0 when it does not fit).
pub(crate) fn draw_scale(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    width: u32,
    (low, high): (f32, f32),
    scale: u32,
) -> u32 {
    let (lo, hi) = (number(low), number(high));
    let gap = ADVANCE * scale;
    let labels = text_width(&lo, scale) + text_width(&hi, scale) + 2 * gap;
    let bar = (width.saturating_sub(labels)).min(64 * scale);
    if bar < 8 * scale {
        return 0;
    }
    draw_text(img, x, y, &lo, scale, INK);
    let bar_x = x + i64::from(text_width(&lo, scale) + gap);
    for i in 0..bar {
        let t = i as f32 / (bar - 1).max(1) as f32;
        fill(
            img,
            bar_x + i64::from(i),
            y,
            1,
            i64::from(GLYPH_H * scale),
            viridis(t),
        );
    }
    draw_text(img, bar_x + i64::from(bar + gap), y, &hi, scale, INK);
    labels + bar
}

/// The font scale for a picture `width` pixels wide: 1 up to 600 pixels, then one more per 600,
/// so that a caption stays readable on a camera photo.
pub(crate) fn scale_for(width: u32) -> u32 {
    (width / 600 + 1).min(8)
}

/// Writes a caption over the bottom of a full-size picture (an `explain -o` overlay): the photo
/// is dimmed under one line of `text` on the left and, when given, a colour scale of the map's
/// `range` on the right. The picture keeps its size (it still lines up with the original).
pub(crate) fn caption_band(img: &mut RgbImage, text: &str, range: Option<(f32, f32)>) {
    let (w, h) = img.dimensions();
    let s = scale_for(w);
    let band = LINE_H * s + s;
    if h < band || w < 4 * s {
        return;
    }
    let top = h - band;
    for y in top..h {
        for x in 0..w {
            let p = img.get_pixel_mut(x, y);
            p.0 = p.0.map(|v| (f32::from(v) * BAND_DIM).round() as u8);
        }
    }
    let pad = 2 * s;
    let text_y = i64::from(top + (band - GLYPH_H * s) / 2);
    let mut right = w - pad;
    if let Some(range) = range {
        let room = (w - 2 * pad) / 2;
        let mut probe = RgbImage::new(1, 1);
        let used = draw_scale(&mut probe, 0, 0, room, range, s);
        if used > 0 {
            right = w - pad - used;
            draw_scale(img, i64::from(right), text_y, used, range, s);
            right = right.saturating_sub(ADVANCE * s);
        }
    }
    let text = fit(text, right.saturating_sub(pad), s);
    draw_text(img, i64::from(pad), text_y, &text, s, INK);
}

/// A picture scaled to fit a `tile`-pixel square, keeping its aspect ratio.
pub(crate) fn thumbnail(photo: &RgbImage, tile: u32) -> RgbImage {
    let (w, h) = photo.dimensions();
    let scale = f64::from(tile) / f64::from(w.max(h).max(1));
    let tw = ((f64::from(w) * scale).round() as u32).clamp(1, tile);
    let th = ((f64::from(h) * scale).round() as u32).clamp(1, tile);
    image::imageops::resize(photo, tw, th, image::imageops::FilterType::Triangle)
}

/// One cell of a contact sheet: a picture (already fitted to the tile, or none: an empty
/// square), up to [`Sheet`]'s lines of caption under it, and an optional colour scale.
#[derive(Debug, Clone, Default)]
pub(crate) struct SheetCell {
    pub picture: Option<RgbImage>,
    pub caption: Vec<String>,
    pub range: Option<(f32, f32)>,
}

/// A contact sheet: cells in rows of `columns`, each a `tile`-pixel square with its caption
/// (`lines` lines of text, then a scale line when any cell has a range) under it, [`GAP`]
/// pixels apart and around, on a dark background.
#[derive(Debug)]
pub(crate) struct Sheet {
    pub tile: u32,
    pub columns: u32,
    pub lines: u32,
    pub cells: Vec<SheetCell>,
}

/// The gap between cells and around the sheet, in pixels.
pub(crate) const GAP: u32 = 4;
/// The sheet's background.
const BACKGROUND: [u8; 3] = [24, 24, 24];

impl Sheet {
    /// The height of a cell's caption: its text lines and scale line, after a 2-pixel gap.
    pub(crate) fn caption_height(&self) -> u32 {
        let scales = u32::from(self.cells.iter().any(|c| c.range.is_some()));
        let lines = self.lines + scales;
        if lines == 0 {
            0
        } else {
            2 + lines * LINE_H
        }
    }

    /// Width and height of the rendered sheet.
    pub(crate) fn size(&self) -> (u32, u32) {
        let columns = self.columns.max(1);
        let rows = (self.cells.len() as u32).div_ceil(columns).max(1);
        let cell_h = self.tile + self.caption_height();
        (
            GAP + columns * (self.tile + GAP),
            GAP + rows * (cell_h + GAP),
        )
    }

    pub(crate) fn render(&self) -> RgbImage {
        let (w, h) = self.size();
        let mut sheet = RgbImage::from_pixel(w, h, image::Rgb(BACKGROUND));
        let columns = self.columns.max(1);
        let cell_h = self.tile + self.caption_height();
        for (i, cell) in self.cells.iter().enumerate() {
            let (col, row) = (i as u32 % columns, i as u32 / columns);
            let x0 = GAP + col * (self.tile + GAP);
            let y0 = GAP + row * (cell_h + GAP);
            if let Some(p) = &cell.picture {
                let x = x0 + self.tile.saturating_sub(p.width()) / 2;
                let y = y0 + self.tile.saturating_sub(p.height()) / 2;
                image::imageops::replace(&mut sheet, p, i64::from(x), i64::from(y));
            }
            let mut y = i64::from(y0 + self.tile + 2);
            for line in cell.caption.iter().take(self.lines as usize) {
                let text = fit(line, self.tile, 1);
                draw_text(&mut sheet, i64::from(x0), y, &text, 1, INK);
                y += i64::from(LINE_H);
            }
            if let Some(range) = cell.range {
                let y = i64::from(y0 + self.tile + 2 + self.lines * LINE_H);
                draw_scale(&mut sheet, i64::from(x0), y, self.tile, range, 1);
            }
        }
        sheet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drawn_glyph_is_its_font_table_entry() {
        for (c, scale) in [('A', 1), ('g', 1), ('7', 3)] {
            let mut img = RgbImage::new(ADVANCE * scale, GLYPH_H * scale);
            draw_text(&mut img, 0, 0, &c.to_string(), scale, INK);
            let columns = glyph(c);
            for y in 0..GLYPH_H * scale {
                for x in 0..ADVANCE * scale {
                    let (col, row) = (x / scale, y / scale);
                    let on = col < GLYPH_W && (columns[col as usize] >> row) & 1 == 1;
                    let want = if on { INK } else { [0, 0, 0] };
                    assert_eq!(img.get_pixel(x, y).0, want, "{c:?} at ({x}, {y})");
                }
            }
        }
        // Outside ASCII: the question mark.
        assert_eq!(glyph('é'), glyph('?'));
    }

    #[test]
    fn text_is_cut_to_fit_and_clipped_at_the_edges() {
        assert_eq!(text_width("abc", 1), 17);
        assert_eq!(text_width("abc", 2), 34);
        assert_eq!(fit("short", 100, 1), "short");
        let cut = fit("a-rather-long-file-name.jpg", 60, 1);
        assert!(text_width(&cut, 1) <= 60, "{cut}");
        assert!(cut.ends_with(".."), "{cut}");
        // Drawing past the edges does not panic.
        let mut img = RgbImage::new(4, 4);
        draw_text(&mut img, -3, -3, "WW", 2, INK);
        draw_text(&mut img, 3, 3, "WW", 2, INK);
    }

    #[test]
    fn a_caption_changes_only_the_band_and_keeps_the_size() {
        let photo = RgbImage::from_pixel(300, 200, image::Rgb([120, 160, 200]));
        let mut captioned = photo.clone();
        caption_band(
            &mut captioned,
            "horse.png  horse  max 0.312",
            Some((0.1, 0.3)),
        );
        assert_eq!(captioned.dimensions(), photo.dimensions());
        let band = LINE_H + 1;
        for y in 0..200 - band {
            for x in 0..300 {
                assert_eq!(captioned.get_pixel(x, y), photo.get_pixel(x, y));
            }
        }
        let inked = (200 - band..200)
            .flat_map(|y| (0..300).map(move |x| (x, y)))
            .filter(|&(x, y)| captioned.get_pixel(x, y).0 == INK)
            .count();
        assert!(inked > 50, "{inked} text pixels");
        // The scale's ends are viridis' ends.
        let row = 200 - band + (band - GLYPH_H) / 2 + 1;
        let colours: Vec<[u8; 3]> = (0..300).map(|x| captioned.get_pixel(x, row).0).collect();
        assert!(colours.contains(&viridis(0.0)) && colours.contains(&viridis(1.0)));
    }

    #[test]
    fn sheets_have_the_size_of_their_layout() {
        let cell = |n: u32| SheetCell {
            picture: Some(RgbImage::new(n, n / 2)),
            caption: vec!["1. a.png".into(), "cos 0.300".into()],
            range: None,
        };
        let sheet = Sheet {
            tile: 64,
            columns: 3,
            lines: 2,
            cells: (0..4).map(|_| cell(64)).collect(),
        };
        // Two rows of three: each cell 64 + 2 + 2 lines of 10.
        assert_eq!(sheet.size(), (4 + 3 * 68, 4 + 2 * (64 + 22 + 4)));
        let img = sheet.render();
        assert_eq!(img.dimensions(), sheet.size());
        // The caption is drawn: ink under the first tile.
        let ink = (0..64)
            .flat_map(|x| (70..90).map(move |y| (x + 4, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == INK)
            .count();
        assert!(ink > 20, "{ink}");
        let with_scale = Sheet {
            cells: vec![SheetCell {
                range: Some((0.0, 1.0)),
                ..cell(64)
            }],
            ..sheet
        };
        assert_eq!(with_scale.caption_height(), 2 + 3 * LINE_H);
    }
}
