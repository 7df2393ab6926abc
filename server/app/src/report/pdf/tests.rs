use super::*;
use crate::mail::render::{AttestationRow, Brand, ComputerRow, Figure, ReportView};

fn view(computers: usize) -> ReportView {
    ReportView {
        brand: Brand::new(
            "Zahnarztpraxis Müller – Zürich",
            None,
            "#aa3300",
            "Sample MSP",
        ),
        title: "Maintenance report, November 2026".into(),
        month: "2026-11".into(),
        period: "1 November 2026 – 30 November 2026".into(),
        complete: true,
        time_zone: "Europe/Zurich".into(),
        generated_at: "2026-12-02 09:00 CET".into(),
        summary: vec![Figure {
            label: "Compliant computers".into(),
            value: format!("{computers} of {computers} (100 %)"),
        }],
        computers: (0..computers)
            .map(|i| ComputerRow {
                name: format!("PC-{i:04} Приёмная"),
                os: "Windows 11".into(),
                compliance: "Compliant".into(),
                state: "ok",
                as_of: "2026-11-30 22:00 CET".into(),
                sessions: 1,
            })
            .collect(),
        computers_omitted: 0,
        software: vec![],
        tasks: vec![],
        failures: vec![],
        failures_omitted: 0,
        postpones: vec![],
        postpones_by_end_users: 0,
        attestations: vec![AttestationRow {
            session: "0193a1b2-0000-7000-8000-000000000001".into(),
            computer: "PC-0000".into(),
            finished: "2026-11-04 22:30 CET".into(),
            outcome: "Passed".into(),
            chain_head: "0123456789abcdef".repeat(4),
        }],
        attestations_omitted: 0,
        signing_keys: vec!["11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into()],
    }
}

fn text_of(pdf: &[u8]) -> (usize, String) {
    let doc = lopdf::Document::load_mem(pdf).expect("the PDF reads back");
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    let text = doc.extract_text(&pages).expect("its text reads back");
    (pages.len(), text)
}

#[test]
fn the_pdf_reads_back_with_its_text_in_any_latin_or_cyrillic_script() {
    let pdf = render(&view(3)).unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    // The faces are cut down to the glyphs used (whole, they are 1.4 MB).
    assert!(pdf.len() < 100_000, "{} bytes", pdf.len());
    let (pages, text) = text_of(&pdf);
    assert_eq!(pages, 1);
    for needle in [
        "Zahnarztpraxis Müller – Zürich",
        "Maintenance report, November 2026",
        "PC-0002 Приёмная",
        "No software was installed, updated or removed.",
        "Page 1 of 1",
        "0193a1b2-0000-7000-8000-000000000001",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // The brand bar, the table rules and fills are painted (a rectangle path that is only
    // ended, `re n`, draws nothing: the company's name would be white on white).
    let doc = lopdf::Document::load_mem(&pdf).unwrap();
    let first = *doc.get_pages().values().next().unwrap();
    let content = lopdf::content::Content::decode(&doc.get_page_content(first)).unwrap();
    let ops: Vec<&str> = content
        .operations
        .iter()
        .map(|o| o.operator.as_str())
        .collect();
    let painted = ops.windows(2).filter(|w| w == &["re", "f"]).count();
    assert!(painted >= 3, "{ops:?}");
    assert!(!ops.windows(2).any(|w| w == ["re", "n"]), "{ops:?}");
    // The chain head wraps inside its cell, but every digit is there.
    let compact: String = text.split_whitespace().collect();
    assert!(compact.contains(&"0123456789abcdef".repeat(4)), "{text}");
}

#[test]
fn long_tables_span_pages_and_every_page_is_numbered() {
    let pdf = render(&view(400)).unwrap();
    let (pages, text) = text_of(&pdf);
    assert!(pages > 5, "{pages} pages for 400 computers");
    assert!(text.contains(&format!("Page {pages} of {pages}")), "{text}");
    assert!(text.contains("PC-0399"));
    // The table's header is repeated on each page it spans.
    assert!(text.matches("Operating system").count() >= pages - 1);
}

#[test]
fn characters_the_faces_lack_and_control_characters_do_not_break_the_page() {
    let mut v = view(1);
    v.computers[0].name = "受付 PC\u{7}\r\nnext".into();
    // A cell taller than a page is cut, and the page still ends in its footer.
    v.computers[0].os = "word ".repeat(3_000);
    let (_, text) = text_of(&render(&v).unwrap());
    assert!(text.matches("word").count() < 1_000, "the cell was cut");
    assert!(text.contains("?? PC"), "{text}");
    assert!(text.contains("next"), "{text}");
}
