//! Renders the e-mails (subject, text, HTML) and the end users' postpone page from Handlebars
//! templates (CONTRACT §8).
//!
//! Invariants:
//! - Two registries: HTML templates escape every `{{value}}`; text and subject templates do
//!   not (so `A&B` stays `A&B` in text/plain). Both run in strict mode: a misspelled variable is
//!   an error, never an empty string.
//! - Every template is compiled *and* rendered against sample views in [`Templates::load`], so a
//!   broken override fails at start-up naming its file, not at the first mail.
//! - The brand colour reaching a template is always a valid `#rrggbb` and the logo URL is
//!   http(s) or absent ([`Brand`] serializes through a sanitizing view), so tenant settings
//!   cannot inject CSS or markup.
//! - A rendered subject never contains control characters (no header injection through a
//!   computer or company name).

mod report_view;
mod samples;
mod views;

pub use report_view::{
    AttestationRow, ComputerRow, FailureRow, Figure, PostponeRow, ReportView, SoftwareRow, TaskRow,
};
pub use views::{
    ActionOutcome, ActionView, Brand, ComputerLink, PlannedChange, PostponePageView, PostponeState,
    RebootExpectation, SessionMailView, TestMailView, sanitize_color,
};

use samples::{sample_brand, sample_page_views, sample_session_views};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use serde::Serialize;

/// Colour used when a tenant's `primaryColor` is missing or not `#rrggbb`.
pub const DEFAULT_PRIMARY_COLOR: &str = "#2563eb";

/// Longest subject we produce, in characters; longer ones are cut with an ellipsis.
const MAX_SUBJECT_CHARS: usize = 200;

/// How a template is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A top-level template of the HTML registry (escaping).
    Html,
    /// A top-level template of the text registry (no escaping): text parts and subjects.
    Text,
    /// A partial, registered in both registries under its file stem.
    Partial,
}

/// The built-in templates: file (relative to `templates/`), kind, content. Embedded so the
/// binary works from any working directory.
const BUILTIN: &[(&str, Kind, &str)] = &[
    (
        "maintenance-before.html.hbs",
        Kind::Html,
        include_str!("../../../../templates/maintenance-before.html.hbs"),
    ),
    (
        "maintenance-before.txt.hbs",
        Kind::Text,
        include_str!("../../../../templates/maintenance-before.txt.hbs"),
    ),
    (
        "maintenance-before.subject.hbs",
        Kind::Text,
        include_str!("../../../../templates/maintenance-before.subject.hbs"),
    ),
    (
        "maintenance-after.html.hbs",
        Kind::Html,
        include_str!("../../../../templates/maintenance-after.html.hbs"),
    ),
    (
        "maintenance-after.txt.hbs",
        Kind::Text,
        include_str!("../../../../templates/maintenance-after.txt.hbs"),
    ),
    (
        "maintenance-after.subject.hbs",
        Kind::Text,
        include_str!("../../../../templates/maintenance-after.subject.hbs"),
    ),
    (
        "test.html.hbs",
        Kind::Html,
        include_str!("../../../../templates/test.html.hbs"),
    ),
    (
        "test.txt.hbs",
        Kind::Text,
        include_str!("../../../../templates/test.txt.hbs"),
    ),
    (
        "test.subject.hbs",
        Kind::Text,
        include_str!("../../../../templates/test.subject.hbs"),
    ),
    (
        "tenant-report.html.hbs",
        Kind::Html,
        include_str!("../../../../templates/tenant-report.html.hbs"),
    ),
    (
        "postpone.html.hbs",
        Kind::Html,
        include_str!("../../../../templates/postpone.html.hbs"),
    ),
    (
        "partials/layout-html.hbs",
        Kind::Partial,
        include_str!("../../../../templates/partials/layout-html.hbs"),
    ),
    (
        "partials/actions-html.hbs",
        Kind::Partial,
        include_str!("../../../../templates/partials/actions-html.hbs"),
    ),
    (
        "partials/button-html.hbs",
        Kind::Partial,
        include_str!("../../../../templates/partials/button-html.hbs"),
    ),
    (
        "partials/actions-txt.hbs",
        Kind::Partial,
        include_str!("../../../../templates/partials/actions-txt.hbs"),
    ),
    (
        "partials/footer-txt.hbs",
        Kind::Partial,
        include_str!("../../../../templates/partials/footer-txt.hbs"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: {message}")]
    Invalid { name: String, message: String },
    #[error("render {name}: {message}")]
    Render { name: String, message: String },
    #[error("templates dir {path}: {message}")]
    Io { path: String, message: String },
}

/// Which session e-mail to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTemplate {
    /// Sent after detection, before execution.
    Before,
    /// Sent when the session has finished.
    After,
}

impl MailTemplate {
    fn base(self) -> &'static str {
        match self {
            MailTemplate::Before => "maintenance-before",
            MailTemplate::After => "maintenance-after",
        }
    }
}

/// A rendered e-mail. `subject` is a single line with no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Compiled templates. Cheap to share (`Arc<Templates>`); rendering takes `&self`.
#[derive(Debug)]
pub struct Templates {
    html: Handlebars<'static>,
    text: Handlebars<'static>,
    /// Registry name (template or partial) → where it came from, for error messages.
    origins: HashMap<String, String>,
}

impl Templates {
    /// Built-in templates are embedded with include_str! from `templates/`, so the binary works
    /// from any cwd. With `Some(dir)`, files present in `dir` override the built-in ones of the
    /// same name (a missing file falls back to the built-in one), and any other
    /// `partials/*.hbs` in `dir` is registered as an extra partial. Every template is compiled
    /// and then rendered against sample views here; a broken one returns `Err` naming the file
    /// and the handlebars message.
    pub fn load(dir: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut html = new_registry();
        let mut text = new_registry();
        text.register_escape_fn(handlebars::no_escape);
        let mut origins = HashMap::new();

        // Checks the directory first, so a mistyped `--templates-dir` fails loudly.
        let extras = match dir {
            Some(d) => extra_partials(d)?,
            None => Vec::new(),
        };
        let mut sources: Vec<(String, Kind, String, String)> = Vec::new();
        for &(file, kind, builtin) in BUILTIN {
            let (content, origin) = match dir {
                Some(d) => match read_override(&d.join(file))? {
                    Some((content, path)) => (content, path),
                    None => (builtin.to_owned(), format!("{file} (built-in)")),
                },
                None => (builtin.to_owned(), format!("{file} (built-in)")),
            };
            sources.push((file.to_owned(), kind, content, origin));
        }
        for (file, content, origin) in extras {
            sources.push((file, Kind::Partial, content, origin));
        }

        for (file, kind, content, origin) in &sources {
            let name = registry_name(file, *kind);
            let compiled = match kind {
                Kind::Html => html.register_template_string(&name, content),
                Kind::Text => text.register_template_string(&name, content),
                Kind::Partial => html
                    .register_partial(&name, content)
                    .and_then(|()| text.register_partial(&name, content)),
            };
            compiled.map_err(|e| TemplateError::Invalid {
                name: origin.clone(),
                message: describe_template_error(&e),
            })?;
            origins.insert(name, origin.clone());
        }

        let templates = Templates {
            html,
            text,
            origins,
        };
        templates.smoke_test()?;
        Ok(templates)
    }

    pub fn render_session_mail(
        &self,
        kind: MailTemplate,
        view: &SessionMailView,
    ) -> Result<RenderedMail, TemplateError> {
        let base = kind.base();
        let data = to_context(base, view)?;
        Ok(RenderedMail {
            subject: clean_subject(&self.render_text(&format!("{base}.subject"), &data)?),
            text: tidy_text(&self.render_text(&format!("{base}.txt"), &data)?),
            html: self.render_html(&format!("{base}.html"), &data)?,
        })
    }

    pub fn render_test_mail(&self, view: &TestMailView) -> Result<RenderedMail, TemplateError> {
        let data = to_context("test", view)?;
        Ok(RenderedMail {
            subject: clean_subject(&self.render_text("test.subject", &data)?),
            text: tidy_text(&self.render_text("test.txt", &data)?),
            html: self.render_html("test.html", &data)?,
        })
    }

    pub fn render_postpone_page(&self, view: &PostponePageView) -> Result<String, TemplateError> {
        let data = to_context("postpone", view)?;
        self.render_html("postpone.html", &data)
    }

    /// The monthly report as a standalone HTML document.
    pub fn render_report_page(&self, view: &ReportView) -> Result<String, TemplateError> {
        let data = to_context("tenant-report", view)?;
        self.render_html("tenant-report.html", &data)
    }

    fn render_html(&self, name: &str, data: &serde_json::Value) -> Result<String, TemplateError> {
        // Comments and inline-partial definitions leave blank lines before `<!DOCTYPE html>`.
        self.html
            .render(name, data)
            .map(|html| html.trim_start().to_owned())
            .map_err(|e| render_error(name, &e))
    }

    fn render_text(&self, name: &str, data: &serde_json::Value) -> Result<String, TemplateError> {
        self.text
            .render(name, data)
            .map_err(|e| render_error(name, &e))
    }

    /// Renders every template against sample views (full and minimal, every postpone state), so
    /// strict mode reports an unknown variable or a missing partial now, naming the file.
    fn smoke_test(&self) -> Result<(), TemplateError> {
        for view in sample_session_views() {
            for kind in [MailTemplate::Before, MailTemplate::After] {
                let base = kind.base();
                let data = to_context(base, &view)?;
                for part in ["subject", "txt"] {
                    let name = format!("{base}.{part}");
                    self.smoke_render(&self.text, &name, &data)?;
                }
                let name = format!("{base}.html");
                self.smoke_render(&self.html, &name, &data)?;
            }
        }
        let test = to_context(
            "test",
            &TestMailView {
                brand: sample_brand(),
                recipient: "user@example.com".to_owned(),
            },
        )?;
        for name in ["test.subject", "test.txt"] {
            self.smoke_render(&self.text, name, &test)?;
        }
        self.smoke_render(&self.html, "test.html", &test)?;
        for view in sample_page_views() {
            let data = to_context("postpone", &view)?;
            self.smoke_render(&self.html, "postpone.html", &data)?;
        }
        for view in samples::sample_report_views() {
            let data = to_context("tenant-report", &view)?;
            self.smoke_render(&self.html, "tenant-report.html", &data)?;
        }
        Ok(())
    }

    fn smoke_render(
        &self,
        registry: &Handlebars<'static>,
        name: &str,
        data: &serde_json::Value,
    ) -> Result<(), TemplateError> {
        registry.render(name, data).map(drop).map_err(|e| {
            // Name the file the error is in: the partial's when it is in one.
            let file = e
                .template_name
                .as_ref()
                .and_then(|t| self.origins.get(t))
                .or_else(|| self.origins.get(name))
                .cloned()
                .unwrap_or_else(|| name.to_owned());
            TemplateError::Invalid {
                name: file,
                message: describe_render_error(&e),
            }
        })
    }
}

/// Formats an instant for end users in the tenant's time zone with its abbreviation, e.g.
/// "Tuesday, 3 March 2026 at 22:00 CET" (people know "CET", not "Europe/Berlin").
pub fn format_when(t: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> String {
    upkeep_core::localtime::long(t, tz)
}

fn new_registry() -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    // Partials keep their own layout; the spec's auto-indenting would shift text lines.
    h.set_prevent_indent(true);
    h
}

/// "maintenance-before.html.hbs" → "maintenance-before.html"; "partials/layout-html.hbs" →
/// "layout-html" (the name used in `{{> layout-html}}`).
fn registry_name(file: &str, kind: Kind) -> String {
    let stem = file.strip_suffix(".hbs").unwrap_or(file);
    match kind {
        Kind::Partial => stem.rsplit('/').next().unwrap_or(stem).to_owned(),
        Kind::Html | Kind::Text => stem.to_owned(),
    }
}

/// Reads an override file; `None` when it does not exist.
fn read_override(path: &Path) -> Result<Option<(String, String)>, TemplateError> {
    match std::fs::read_to_string(path) {
        Ok(content) => Ok(Some((content, path.display().to_string()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TemplateError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
    }
}

/// `partials/*.hbs` in the override dir that are not built-in: (file, content, origin), sorted.
/// Fails when `dir` is not a readable directory.
fn extra_partials(dir: &Path) -> Result<Vec<(String, String, String)>, TemplateError> {
    let io = |path: &Path, e: std::io::Error| TemplateError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(dir).map_err(|e| io(dir, e))?;
    if !meta.is_dir() {
        return Err(TemplateError::Io {
            path: dir.display().to_string(),
            message: "not a directory".to_owned(),
        });
    }
    let partials = dir.join("partials");
    let entries = match std::fs::read_dir(&partials) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&partials, e)),
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io(&partials, e))?.path();
        if path.extension().is_some_and(|x| x == "hbs") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let file = format!("partials/{file_name}");
        if BUILTIN.iter().any(|&(f, _, _)| f == file) {
            continue;
        }
        let content = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        out.push((file, content, path.display().to_string()));
    }
    Ok(out)
}

fn to_context<T: Serialize>(name: &str, view: &T) -> Result<serde_json::Value, TemplateError> {
    serde_json::to_value(view).map_err(|e| TemplateError::Render {
        name: name.to_owned(),
        message: e.to_string(),
    })
}

fn describe_template_error(e: &handlebars::TemplateError) -> String {
    match e.pos() {
        Some((line, col)) => format!("{} (line {line}, column {col})", e.reason()),
        None => e.reason().to_string(),
    }
}

fn describe_render_error(e: &handlebars::RenderError) -> String {
    let reason = e.reason().to_string();
    match (&e.template_name, e.line_no, e.column_no) {
        (Some(t), Some(line), Some(col)) => format!("{reason} (in {t}, line {line}, column {col})"),
        (Some(t), _, _) => format!("{reason} (in {t})"),
        _ => reason,
    }
}

fn render_error(name: &str, e: &handlebars::RenderError) -> TemplateError {
    TemplateError::Render {
        name: name.to_owned(),
        message: describe_render_error(e),
    }
}

/// One line, no control characters, at most `max` characters (an ellipsis marks a cut).
fn one_line(s: &str, max: usize) -> String {
    let folded: String = s
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                ' '
            } else {
                c
            }
        })
        .collect();
    let joined = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > max {
        let mut cut: String = joined.chars().take(max.saturating_sub(1)).collect();
        cut.truncate(cut.trim_end().len());
        cut.push('…');
        cut
    } else {
        joined
    }
}

/// A subject is one header line: control characters (CR, LF, ...) become spaces, whitespace
/// runs collapse, and it is capped in length.
fn clean_subject(s: &str) -> String {
    one_line(s, MAX_SUBJECT_CHARS)
}

/// Plain-text parts: trailing spaces removed, runs of blank lines collapsed to one, no blank
/// lines at the start, exactly one newline at the end. Lets templates use conditionals freely.
fn tidy_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank_run = 0usize;
    for line in s.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() && blank_run > 0 {
            out.push('\n');
        }
        blank_run = 0;
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
