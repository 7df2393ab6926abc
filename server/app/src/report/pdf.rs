//! The monthly report as a PDF, drawn in-process with printpdf: A4 pages, the tenant's colour
//! and name in a bar on the first page, the summary, then one table per list, each table's
//! header repeated on every page it spans, and "page n of N" at the foot of each page.
//!
//! Text is set in DejaVu Sans (regular and bold, compiled in from `templates/fonts/`, subset
//! into the file): Latin, Greek and Cyrillic scripts read as they are; a character the faces
//! lack is drawn as "?". Control characters become spaces. The text layer carries a ToUnicode
//! map, so the text can be searched and copied (the end-to-end test reads it back).

use crate::mail::render::ReportView;
use printpdf::{
    Color, FontId, Mm, Op, PaintMode, ParsedFont, PdfDocument, PdfFontHandle, PdfPage,
    PdfSaveOptions, Point, Pt, Rect, Rgb, TextItem,
};
use std::collections::BTreeSet;
use std::sync::LazyLock;

const REGULAR_TTF: &[u8] = include_bytes!("../../../../templates/fonts/DejaVuSans.ttf");
const BOLD_TTF: &[u8] = include_bytes!("../../../../templates/fonts/DejaVuSans-Bold.ttf");

/// A4 in points.
const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const MARGIN: f32 = 42.0;
/// The lowest a line of content may sit: below it are the footer lines.
const BOTTOM: f32 = 58.0;
const CONTENT_W: f32 = PAGE_W - 2.0 * MARGIN;
const TABLE_SIZE: f32 = 7.5;
const CELL_PAD: f32 = 3.0;
/// Most lines of one table cell (a page holds about 70).
const MAX_CELL_LINES: usize = 40;

/// The faces, parsed once per process.
static FACES: LazyLock<Option<(ParsedFont, ParsedFont)>> = LazyLock::new(|| {
    let regular = ParsedFont::from_bytes(REGULAR_TTF, 0, &mut Vec::new())?;
    let bold = ParsedFont::from_bytes(BOLD_TTF, 0, &mut Vec::new())?;
    Some((regular, bold))
});

/// The compiled-in faces would not parse (a broken build, never input).
#[derive(Debug, thiserror::Error)]
#[error("the report's fonts could not be read")]
pub struct PdfError;

/// The report as PDF bytes.
pub fn render(view: &ReportView) -> Result<Vec<u8>, PdfError> {
    let (regular, bold) = FACES.as_ref().ok_or(PdfError)?;
    let mut doc = PdfDocument::new(&view.title);
    doc.metadata.info.author = view.brand.msp_name.clone();
    doc.metadata.info.creator = "Upkeep".into();
    doc.metadata.info.subject = format!("{} {}", view.brand.company_name, view.period);
    let mut w = Writer {
        regular: Face {
            id: FontId::new(),
            font: regular,
        },
        bold: Face {
            id: FontId::new(),
            font: bold,
        },
        brand: brand_colors(view),
        pages: Vec::new(),
        ops: Vec::new(),
        y: PAGE_H - MARGIN,
    };
    sections(&mut w, view);
    w.pages.push(std::mem::take(&mut w.ops));
    let total = w.pages.len();
    let footer = format!("{} · {}", view.title, view.brand.company_name);
    let pages: Vec<PdfPage> = std::mem::take(&mut w.pages)
        .into_iter()
        .enumerate()
        .map(|(i, mut ops)| {
            w.footer(&mut ops, &footer, &format!("Page {} of {total}", i + 1));
            PdfPage::new(Mm::from(Pt(PAGE_W)), Mm::from(Pt(PAGE_H)), ops)
        })
        .collect();
    // The faces go in with only the glyphs the pages use.
    for face in [&w.regular, &w.bold] {
        let font = subset(face.font, &used_chars(&pages, &face.id));
        doc.resources
            .fonts
            .map
            .insert(face.id.clone(), printpdf::PdfFont::new(font));
    }
    Ok(doc
        .with_pages(pages)
        .save(&PdfSaveOptions::default(), &mut Vec::new()))
}

/// The characters the pages show in the font `id`.
fn used_chars(pages: &[PdfPage], id: &FontId) -> BTreeSet<char> {
    let mut used = BTreeSet::new();
    for page in pages {
        let mut current = false;
        for op in &page.ops {
            match op {
                Op::SetFont {
                    font: PdfFontHandle::External(f),
                    ..
                } => current = f == id,
                Op::ShowText { items } if current => {
                    for item in items {
                        if let TextItem::Text(t) = item {
                            used.extend(t.chars());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    used
}

/// `font` cut down to the glyphs of `chars` (and `.notdef`): printpdf embeds a face whole
/// without its `text_layout` feature, and DejaVu Sans is 700 KB a face. The whole face when
/// the cut fails (a larger file, never a broken one).
fn subset(font: &ParsedFont, chars: &BTreeSet<char>) -> ParsedFont {
    use allsorts::binary::read::ReadScope;
    use allsorts::font_data::FontData;
    use allsorts::subset::{CmapTarget, SubsetProfile};
    let mut glyphs: Vec<u16> = chars
        .iter()
        .filter_map(|c| font.lookup_glyph_index(*c as u32))
        .collect();
    glyphs.push(0);
    glyphs.sort_unstable();
    glyphs.dedup();
    let bytes = &font.original_bytes;
    let cut = ReadScope::new(bytes)
        .read::<FontData<'_>>()
        .ok()
        .and_then(|data| data.table_provider(0).ok())
        .and_then(|provider| {
            allsorts::subset::subset(
                &provider,
                &glyphs,
                &SubsetProfile::Minimal,
                CmapTarget::Unicode,
            )
            .ok()
        })
        .and_then(|b| ParsedFont::from_bytes(&b, 0, &mut Vec::new()));
    cut.unwrap_or_else(|| font.clone())
}

fn sections(w: &mut Writer<'_>, v: &ReportView) {
    w.title_block(v);
    w.heading("Summary");
    for f in &v.summary {
        w.need(14.0);
        w.text(MARGIN, w.y, 9.0, false, GREY, &f.label);
        w.text(MARGIN + 200.0, w.y, 9.0, true, INK, &f.value);
        w.y -= 14.0;
    }
    let when_done = if v.complete {
        " at the end of the month"
    } else {
        ""
    };
    w.heading(&format!("Computers and their compliance{when_done}"));
    let rows = v.computers.iter().map(|c| {
        let tone = match c.state {
            "ok" => Tone::Ok,
            "bad" => Tone::Bad,
            _ => Tone::Muted,
        };
        vec![
            cell(&c.name),
            cell(&c.os),
            (c.compliance.clone(), tone),
            cell(&c.as_of),
            cell(&c.sessions.to_string()),
        ]
    });
    let cols = [
        col("Computer", 0.28),
        col("Operating system", 0.24),
        col("Compliance", 0.15),
        col("As of", 0.22),
        col("Sessions", 0.11),
    ];
    w.table(&cols, rows, "No computers.");
    w.omitted(v.computers_omitted, "more computers are not listed");
    lists(w, v);
}

fn lists(w: &mut Writer<'_>, v: &ReportView) {
    w.heading("Software installed and updated");
    let rows = v.software.iter().map(|s| {
        vec![
            cell(&s.name),
            cell(&s.installed.to_string()),
            cell(&s.updated.to_string()),
            cell(&s.removed.to_string()),
            cell(&s.computers.to_string()),
            cell(&s.versions),
        ]
    });
    let cols = [
        col("Software", 0.30),
        col("Installed", 0.11),
        col("Updated", 0.11),
        col("Removed", 0.11),
        col("Computers", 0.12),
        col("Versions", 0.25),
    ];
    w.table(
        &cols,
        rows,
        "No software was installed, updated or removed.",
    );
    w.heading("Tasks remediated");
    let rows = v.tasks.iter().map(|t| {
        vec![
            cell(&t.name),
            cell(&t.remediated.to_string()),
            cell(&t.computers.to_string()),
        ]
    });
    let cols = [
        col("Task", 0.6),
        col("Remediations", 0.2),
        col("Computers", 0.2),
    ];
    w.table(&cols, rows, "No task had to change a computer.");
    w.heading("Failures and what was done about them");
    let rows = v.failures.iter().map(|f| {
        let tone = if f.resolved { Tone::Ok } else { Tone::Bad };
        vec![
            cell(&f.when),
            cell(&f.computer),
            cell(&f.item),
            cell(&f.message),
            (f.resolution.clone(), tone),
        ]
    });
    let cols = [
        col("When", 0.15),
        col("Computer", 0.15),
        col("What", 0.15),
        col("Error", 0.27),
        col("What was done", 0.28),
    ];
    w.table(&cols, rows, "Nothing failed.");
    w.omitted(v.failures_omitted, "older failures are not listed");
    postpones_and_records(w, v);
}

fn postpones_and_records(w: &mut Writer<'_>, v: &ReportView) {
    w.heading("Postponed by end users");
    if !v.postpones.is_empty() {
        let times = if v.postpones_by_end_users == 1 {
            "time"
        } else {
            "times"
        };
        w.paragraph(&format!(
            "End users postponed maintenance {} {times} through the links in their e-mails.",
            v.postpones_by_end_users
        ));
    }
    let rows = v.postpones.iter().map(|p| {
        vec![
            cell(&p.computer),
            cell(&p.by_end_user.to_string()),
            cell(&p.total.to_string()),
            cell(&p.finished),
            cell(&p.outcome),
        ]
    });
    let cols = [
        col("Computer", 0.3),
        col("By the end user", 0.15),
        col("In all", 0.1),
        col("Finished", 0.25),
        col("Outcome", 0.2),
    ];
    w.table(&cols, rows, "No maintenance was postponed.");
    w.heading("Signed session records");
    if !v.attestations.is_empty() {
        w.paragraph(
            "Each session's log is a hash chain whose head the server signed (Ed25519) when the \
             session ended. The full record of a session verifies offline with \
             upkeep-server verify-record.",
        );
        w.paragraph(&format!("Signed with {}", v.signing_keys.join(", ")));
    }
    let rows = v.attestations.iter().map(|a| {
        vec![
            cell(&a.finished),
            cell(&a.computer),
            cell(&a.outcome),
            cell(&a.session),
            cell(&a.chain_head),
        ]
    });
    let cols = [
        col("Finished", 0.14),
        col("Computer", 0.14),
        col("Outcome", 0.09),
        col("Session", 0.35),
        col("Chain head", 0.28),
    ];
    w.table(&cols, rows, "No session ended this month.");
    w.omitted(v.attestations_omitted, "older records are not listed");
}

type Rgbf = (f32, f32, f32);
const INK: Rgbf = (0.12, 0.16, 0.22);
const GREY: Rgbf = (0.29, 0.33, 0.39);
const RULE: Rgbf = (0.90, 0.91, 0.92);
const HEAD_FILL: Rgbf = (0.976, 0.98, 0.984);

#[derive(Clone, Copy)]
enum Tone {
    Plain,
    Ok,
    Bad,
    Muted,
}

impl Tone {
    fn color(self) -> Rgbf {
        match self {
            Tone::Plain => INK,
            Tone::Ok => (0.08, 0.5, 0.24),
            Tone::Bad => (0.73, 0.11, 0.11),
            Tone::Muted => (0.42, 0.45, 0.5),
        }
    }
}

fn cell(s: &str) -> (String, Tone) {
    (s.to_owned(), Tone::Plain)
}

struct Column {
    title: &'static str,
    /// Share of the content width.
    share: f32,
}

fn col(title: &'static str, share: f32) -> Column {
    Column { title, share }
}

/// The brand colour and the text colour on it, as the HTML page has them.
fn brand_colors(v: &ReportView) -> (Rgbf, Rgbf) {
    let (primary, on) = v.brand.colors();
    (
        parse_hex(&primary).unwrap_or((0.145, 0.388, 0.922)),
        parse_hex(on).unwrap_or((1.0, 1.0, 1.0)),
    )
}

fn parse_hex(s: &str) -> Option<Rgbf> {
    let h = s.strip_prefix('#').filter(|h| h.len() == 6)?;
    let byte = |i: usize| u8::from_str_radix(h.get(i..i + 2)?, 16).ok();
    let f = |b: u8| f32::from(b) / 255.0;
    Some((f(byte(0)?), f(byte(2)?), f(byte(4)?)))
}

struct Face<'a> {
    id: FontId,
    font: &'a ParsedFont,
}

impl Face<'_> {
    /// What will be drawn for `s`: control characters as spaces, missing glyphs as "?".
    fn clean(&self, s: &str) -> String {
        s.chars()
            .map(|c| match c {
                c if c.is_control() => ' ',
                c if self.font.lookup_glyph_index(c as u32).is_some() => c,
                _ => '?',
            })
            .collect()
    }

    fn width(&self, s: &str, size: f32) -> f32 {
        let em = f32::from(self.font.units_per_em.max(1));
        let units: u32 = s
            .chars()
            .map(|c| {
                self.font
                    .lookup_glyph_index(c as u32)
                    .and_then(|g| self.font.get_glyph_width(g))
                    .map_or(600, u32::from)
            })
            .sum();
        units as f32 * size / em
    }

    /// `s` broken into lines no wider than `width`: at spaces, and inside a word longer than a
    /// line (ids, hashes).
    fn wrap(&self, s: &str, size: f32, width: f32) -> Vec<String> {
        let mut lines = Vec::new();
        let mut line = String::new();
        for word in s.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_owned()
            } else {
                format!("{line} {word}")
            };
            if self.width(&candidate, size) <= width {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            for c in word.chars() {
                line.push(c);
                if self.width(&line, size) > width && line.chars().count() > 1 {
                    line.pop();
                    lines.push(std::mem::replace(&mut line, c.to_string()));
                }
            }
        }
        if !line.is_empty() || lines.is_empty() {
            lines.push(line);
        }
        lines
    }
}

struct Writer<'a> {
    regular: Face<'a>,
    bold: Face<'a>,
    /// The brand colour and the text colour on it.
    brand: (Rgbf, Rgbf),
    pages: Vec<Vec<Op>>,
    ops: Vec<Op>,
    /// The baseline of the next line, from the page's foot.
    y: f32,
}

fn rgb((r, g, b): Rgbf) -> Color {
    Color::Rgb(Rgb::new(r, g, b, None))
}

/// `s` in `face` at `(x, y)` (its baseline's start).
fn push_text(
    ops: &mut Vec<Op>,
    face: &Face<'_>,
    (x, y): (f32, f32),
    size: f32,
    color: Rgbf,
    s: &str,
) {
    ops.extend([
        Op::StartTextSection,
        Op::SetFillColor { col: rgb(color) },
        Op::SetFont {
            font: PdfFontHandle::External(face.id.clone()),
            size: Pt(size),
        },
        Op::SetTextCursor {
            pos: Point { x: Pt(x), y: Pt(y) },
        },
        Op::ShowText {
            items: vec![TextItem::Text(face.clean(s))],
        },
        Op::EndTextSection,
    ]);
}

fn push_rect(ops: &mut Vec<Op>, (x, y, w, h): (f32, f32, f32, f32), color: Rgbf) {
    ops.extend([
        Op::SetFillColor { col: rgb(color) },
        Op::DrawRectangle {
            rectangle: Rect {
                mode: Some(PaintMode::Fill),
                ..Rect::from_xywh(Pt(x), Pt(y), Pt(w), Pt(h))
            },
        },
    ]);
}

impl Writer<'_> {
    fn new_page(&mut self) {
        self.pages.push(std::mem::take(&mut self.ops));
        self.y = PAGE_H - MARGIN;
    }

    /// Starts a new page unless `height` more fits above the footer.
    fn need(&mut self, height: f32) -> bool {
        if self.y - height < BOTTOM {
            self.new_page();
            return true;
        }
        false
    }

    fn text(&mut self, x: f32, y: f32, size: f32, bold: bool, color: Rgbf, s: &str) {
        let face = if bold { &self.bold } else { &self.regular };
        push_text(&mut self.ops, face, (x, y), size, color, s);
    }

    fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, color: Rgbf) {
        push_rect(&mut self.ops, (x, y, w, h), color);
    }

    fn title_block(&mut self, v: &ReportView) {
        let (fill, on) = self.brand;
        self.rect(0.0, PAGE_H - 64.0, PAGE_W, 64.0, fill);
        let company = if v.brand.company_name.is_empty() {
            "Maintenance report"
        } else {
            &v.brand.company_name
        };
        self.text(MARGIN, PAGE_H - 40.0, 15.0, true, on, company);
        self.y = PAGE_H - 100.0;
        self.text(MARGIN, self.y, 19.0, true, INK, &v.title);
        self.y -= 18.0;
        let period = format!("{} · times in {}", v.period, v.time_zone);
        self.text(MARGIN, self.y, 9.5, false, GREY, &period);
        self.y -= 8.0;
    }

    fn heading(&mut self, s: &str) {
        self.need(60.0);
        self.y -= 22.0;
        self.text(MARGIN, self.y, 12.0, true, INK, s);
        self.rect(MARGIN, self.y - 5.0, CONTENT_W, 1.5, self.brand.0);
        self.y -= 20.0;
    }

    fn paragraph(&mut self, s: &str) {
        for line in self.regular.wrap(s, 8.5, CONTENT_W) {
            self.need(12.0);
            self.text(MARGIN, self.y, 8.5, false, INK, &line);
            self.y -= 12.0;
        }
        self.y -= 4.0;
    }

    fn omitted(&mut self, n: u64, what: &str) {
        if n > 0 {
            self.need(12.0);
            self.text(MARGIN, self.y, 7.5, false, GREY, &format!("{n} {what}."));
            self.y -= 12.0;
        }
    }

    /// The rule and the two lines at the foot of a page.
    fn footer(&self, ops: &mut Vec<Op>, left: &str, right: &str) {
        push_rect(ops, (MARGIN, 40.0, CONTENT_W, 0.5), RULE);
        push_text(ops, &self.regular, (MARGIN, 28.0), 7.5, GREY, left);
        let x = PAGE_W - MARGIN - self.regular.width(right, 7.5);
        push_text(ops, &self.regular, (x, 28.0), 7.5, GREY, right);
    }

    fn table_header(&mut self, cols: &[Column]) {
        let h = TABLE_SIZE + 2.0 * CELL_PAD + 2.0;
        self.rect(MARGIN, self.y - h, CONTENT_W, h, HEAD_FILL);
        let mut x = MARGIN;
        for c in cols {
            let base = self.y - CELL_PAD - TABLE_SIZE;
            self.text(x + CELL_PAD, base, TABLE_SIZE, true, GREY, c.title);
            x += c.share * CONTENT_W;
        }
        self.y -= h;
    }

    /// A table whose header is repeated on every page it spans; `empty` when it has no rows.
    fn table(
        &mut self,
        cols: &[Column],
        rows: impl Iterator<Item = Vec<(String, Tone)>>,
        empty: &str,
    ) {
        let mut rows = rows.peekable();
        if rows.peek().is_none() {
            self.need(12.0);
            self.text(MARGIN, self.y, 8.5, false, Tone::Muted.color(), empty);
            self.y -= 12.0;
            return;
        }
        self.need(40.0);
        self.table_header(cols);
        let line = TABLE_SIZE * 1.3;
        for row in rows {
            let wrapped: Vec<Vec<String>> = row
                .iter()
                .zip(cols)
                .map(|((text, _), c)| {
                    let width = c.share * CONTENT_W - 2.0 * CELL_PAD;
                    let shown = self.regular.clean(text);
                    let mut lines = self.regular.wrap(&shown, TABLE_SIZE, width);
                    // A row always fits on a page: a cell longer than that is cut.
                    if lines.len() > MAX_CELL_LINES {
                        lines.truncate(MAX_CELL_LINES);
                        if let Some(last) = lines.last_mut() {
                            last.push('…');
                        }
                    }
                    lines
                })
                .collect();
            let lines = wrapped.iter().map(Vec::len).max().unwrap_or(1);
            let h = lines as f32 * line + 2.0 * CELL_PAD;
            if self.need(h) {
                self.table_header(cols);
            }
            let mut x = MARGIN;
            for ((cell_lines, (_, tone)), c) in wrapped.iter().zip(&row).zip(cols) {
                for (i, l) in cell_lines.iter().enumerate() {
                    let base = self.y - CELL_PAD - TABLE_SIZE - i as f32 * line;
                    self.text(x + CELL_PAD, base, TABLE_SIZE, false, tone.color(), l);
                }
                x += c.share * CONTENT_W;
            }
            self.y -= h;
            self.rect(MARGIN, self.y, CONTENT_W, 0.5, RULE);
        }
        self.y -= 6.0;
    }
}

#[cfg(test)]
mod tests;
