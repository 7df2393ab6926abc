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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use serde::Serialize;

/// Colour used when a tenant's `primaryColor` is missing or not `#rrggbb`.
pub const DEFAULT_PRIMARY_COLOR: &str = "#2563eb";

/// Longest subject we produce, in characters; longer ones are cut with an ellipsis.
const MAX_SUBJECT_CHARS: usize = 200;
/// Longest action message kept by [`ActionView::with_outcome`], in characters.
const MAX_ACTION_MESSAGE_CHARS: usize = 300;

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

/// A tenant's branding as templates see it.
///
/// Serialization sanitizes: `primaryColor` is always `#rrggbb` (lower case; the default blue
/// when the stored value is anything else), `logoUrl` is an `http(s)` URL or `null`, and two
/// derived colours are added: `onPrimaryColor` (text on the primary colour, black or white,
/// whichever contrasts more) and `accentTextColor` (the primary colour when it is readable as
/// text on white, else a dark grey).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", into = "BrandContext")]
pub struct Brand {
    pub company_name: String,
    pub logo_url: Option<String>,
    pub primary_color: String,
    /// The MSP's name, shown as the sender and contact in footers; may be empty.
    pub msp_name: String,
}

impl Brand {
    pub fn new(
        company_name: impl Into<String>,
        logo_url: Option<String>,
        primary_color: &str,
        msp_name: impl Into<String>,
    ) -> Brand {
        Brand {
            company_name: company_name.into(),
            logo_url: sanitize_logo_url(logo_url.as_deref()),
            primary_color: sanitize_color(primary_color),
            msp_name: msp_name.into(),
        }
    }
}

impl Default for Brand {
    /// A neutral brand for pages where no tenant is known (a forged postpone link).
    fn default() -> Brand {
        Brand {
            company_name: String::new(),
            logo_url: None,
            primary_color: DEFAULT_PRIMARY_COLOR.to_owned(),
            msp_name: String::new(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BrandContext {
    company_name: String,
    logo_url: Option<String>,
    primary_color: String,
    on_primary_color: &'static str,
    accent_text_color: String,
    msp_name: String,
}

impl From<Brand> for BrandContext {
    fn from(b: Brand) -> BrandContext {
        let primary = sanitize_color(&b.primary_color);
        let (on_primary, accent) = derived_colors(&primary);
        BrandContext {
            company_name: b.company_name,
            logo_url: sanitize_logo_url(b.logo_url.as_deref()),
            accent_text_color: accent.unwrap_or(primary.as_str()).to_owned(),
            primary_color: primary,
            on_primary_color: on_primary,
            msp_name: b.msp_name,
        }
    }
}

/// What the end user should expect about a restart. Serialized as `"none"`, `"may"`, `"will"`.
/// In the after-mail `Will` means the computer was restarted; `May` is not mentioned there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RebootExpectation {
    #[default]
    None,
    May,
    Will,
}

/// One planned (or, after execution, finished) action as shown to an end user.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionView {
    /// Software or task name.
    pub name: String,
    /// The action in words: "Install", "Upgrade", "Uninstall", "Run task", "No change needed".
    pub kind_label: String,
    /// Versions, e.g. "1.10.0" or "1.9.2 → 1.10.0"; empty when there is nothing to add.
    pub detail: String,
    /// After execution: "Succeeded", "Failed", "Skipped", "Cancelled"; `None` before.
    pub outcome: Option<String>,
    /// `Some(true)` / `Some(false)` colour the outcome green / red; `None` is neutral.
    pub succeeded: Option<bool>,
    /// A short result message (one line).
    pub message: Option<String>,
}

/// The planned change of an action, for [`ActionView::planned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlannedChange<'a> {
    Install {
        version: Option<&'a str>,
    },
    Upgrade {
        from: Option<&'a str>,
        to: Option<&'a str>,
    },
    Uninstall {
        version: Option<&'a str>,
    },
    RunTask,
    NoChange,
}

/// How a finished action ended, for [`ActionView::with_outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOutcome {
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl ActionView {
    /// An action before execution, with its kind and versions in words.
    pub fn planned(name: impl Into<String>, change: PlannedChange<'_>) -> ActionView {
        let (label, detail) = match change {
            PlannedChange::Install { version } => ("Install", version.unwrap_or("").to_owned()),
            PlannedChange::Upgrade { from, to } => (
                "Upgrade",
                match (from, to) {
                    (Some(f), Some(t)) => format!("{f} → {t}"),
                    (None, Some(t)) => format!("to {t}"),
                    (Some(f), None) => format!("from {f}"),
                    (None, None) => String::new(),
                },
            ),
            PlannedChange::Uninstall { version } => ("Uninstall", version.unwrap_or("").to_owned()),
            PlannedChange::RunTask => ("Run task", String::new()),
            PlannedChange::NoChange => ("No change needed", String::new()),
        };
        ActionView {
            name: name.into(),
            kind_label: label.to_owned(),
            detail,
            outcome: None,
            succeeded: None,
            message: None,
        }
    }

    /// The same action after execution. The message is folded to one line and shortened, as
    /// script output can be long and multi-line.
    pub fn with_outcome(mut self, outcome: ActionOutcome, message: Option<&str>) -> ActionView {
        let (label, succeeded) = match outcome {
            ActionOutcome::Succeeded => ("Succeeded", Some(true)),
            ActionOutcome::Failed => ("Failed", Some(false)),
            ActionOutcome::Skipped => ("Skipped", None),
            ActionOutcome::Cancelled => ("Cancelled", None),
        };
        self.outcome = Some(label.to_owned());
        self.succeeded = succeeded;
        self.message = message
            .map(|m| one_line(m, MAX_ACTION_MESSAGE_CHARS))
            .filter(|m| !m.is_empty());
        self
    }
}

/// Everything the before- and after-mail templates can show.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionMailView {
    pub brand: Brand,
    /// May be empty ("Hello,").
    pub recipient_name: String,
    pub computer_name: String,
    /// Before: when execution starts; after: when it finished. Formatted with [`format_when`].
    pub when: String,
    /// IANA name, e.g. "Europe/Berlin".
    pub time_zone: String,
    pub actions: Vec<ActionView>,
    /// The tenant's `showActionsInEmail`.
    pub show_actions: bool,
    pub reboot: RebootExpectation,
    /// Only when postponing is allowed and still possible (CONTRACT §5: at least 15 minutes).
    pub postpone_url: Option<String>,
    /// Only when "update now" is allowed. The link must lead to a page that asks to confirm
    /// (mail scanners follow links).
    pub update_now_url: Option<String>,
    pub postpones_left: u32,
    /// How long one postpone lasts (the session's `postponeHours`).
    pub postpone_hours: u32,
    /// After-mail: the overall result line, e.g. "2 of 7 actions failed".
    pub result_summary: Option<String>,
    /// Before: nothing needs to change; after: every action is compliant.
    pub compliant: bool,
    /// A mail about several computers of one person (one run): each computer's own postpone
    /// page, for those that offer one. Empty in a mail about one computer, which uses
    /// `postpone_url`.
    pub postpone_links: Vec<ComputerLink>,
}

/// One computer's postpone page in a mail about several.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputerLink {
    pub computer_name: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestMailView {
    pub brand: Brand,
    /// The address the test mail goes to.
    pub recipient: String,
}

/// The states of the postpone page (the `state` field of [`PostponePageView`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostponeState {
    /// GET: what will happen and when, with the buttons.
    Confirm,
    /// POST `postpone` succeeded: `newWhen` holds the new time.
    Postponed,
    /// POST `update-now` was accepted.
    Updating,
    /// The token was already used.
    Used,
    /// The token expired.
    Expired,
    /// The token is forged, malformed, or names nothing.
    Invalid,
    /// No postpones left.
    Limit,
    /// Execution is about to start or has started.
    TooLate,
}

impl PostponeState {
    pub const ALL: [PostponeState; 8] = [
        PostponeState::Confirm,
        PostponeState::Postponed,
        PostponeState::Updating,
        PostponeState::Used,
        PostponeState::Expired,
        PostponeState::Invalid,
        PostponeState::Limit,
        PostponeState::TooLate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PostponeState::Confirm => "confirm",
            PostponeState::Postponed => "postponed",
            PostponeState::Updating => "updating",
            PostponeState::Used => "used",
            PostponeState::Expired => "expired",
            PostponeState::Invalid => "invalid",
            PostponeState::Limit => "limit",
            PostponeState::TooLate => "too-late",
        }
    }
}

impl From<PostponeState> for String {
    fn from(s: PostponeState) -> String {
        s.as_str().to_owned()
    }
}

/// The postpone page. For error states the session fields may be empty strings (an invalid
/// token names no session); the template then leaves them out.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostponePageView {
    pub brand: Brand,
    /// One of [`PostponeState::as_str`]; an unknown value renders a generic error.
    pub state: String,
    pub computer_name: String,
    /// The currently planned execution time, formatted with [`format_when`]; may be empty.
    pub when: String,
    /// State `postponed`: the new time.
    pub new_when: Option<String>,
    pub actions: Vec<ActionView>,
    pub show_actions: bool,
    pub reboot: RebootExpectation,
    pub postpones_left: u32,
    /// How long one postpone lasts (the session's `postponeHours`).
    pub postpone_hours: u32,
    pub allow_update_now: bool,
    /// An extra line under the state's own text.
    pub message: Option<String>,
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

/// `#rrggbb` (lower-cased) when `s` is one, else [`DEFAULT_PRIMARY_COLOR`].
pub fn sanitize_color(s: &str) -> String {
    let s = s.trim();
    let valid =
        s.len() == 7 && s.starts_with('#') && s.bytes().skip(1).all(|b| b.is_ascii_hexdigit());
    if valid {
        s.to_ascii_lowercase()
    } else {
        DEFAULT_PRIMARY_COLOR.to_owned()
    }
}

/// An `http(s)` URL without whitespace or control characters, else `None`.
fn sanitize_logo_url(url: Option<&str>) -> Option<String> {
    let url = url?.trim();
    let lower = url.to_ascii_lowercase();
    let scheme_ok = lower.starts_with("https://") || lower.starts_with("http://");
    let clean = !url.chars().any(|c| c.is_whitespace() || c.is_control());
    (scheme_ok && clean && url.len() > "https://".len()).then(|| url.to_owned())
}

/// (text colour on the primary colour, accent text colour on white if the primary one is not
/// readable there). `primary` must be sanitized.
fn derived_colors(primary: &str) -> (&'static str, Option<&'static str>) {
    let channel = |i: usize| -> f64 {
        let v = primary
            .get(i..i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        let c = f64::from(v) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let l = 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
    let on_white = 1.05 / (l + 0.05);
    let on_black = (l + 0.05) / 0.05;
    let on_primary = if on_white >= on_black {
        "#ffffff"
    } else {
        "#111827"
    };
    let accent = if on_white >= 4.5 {
        None
    } else {
        Some("#1f2937")
    };
    (on_primary, accent)
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

fn sample_brand() -> Brand {
    Brand::new(
        "Sample Company",
        Some("https://example.com/logo.png".to_owned()),
        "#336699",
        "Sample MSP",
    )
}

fn sample_actions(outcomes: bool) -> Vec<ActionView> {
    let mut actions = vec![
        ActionView::planned(
            "Sample App",
            PlannedChange::Upgrade {
                from: Some("1.9.2"),
                to: Some("1.10.0"),
            },
        ),
        ActionView::planned("Sample Task", PlannedChange::RunTask),
        ActionView::planned("Old Tool", PlannedChange::Uninstall { version: None }),
    ];
    if outcomes {
        let results = [
            (ActionOutcome::Succeeded, Some("done")),
            (ActionOutcome::Failed, Some("exit code 1")),
            (ActionOutcome::Skipped, None),
        ];
        actions = actions
            .into_iter()
            .zip(results)
            .map(|(a, (o, m))| a.with_outcome(o, m))
            .collect();
    }
    actions
}

fn sample_session_views() -> Vec<SessionMailView> {
    let full = SessionMailView {
        brand: sample_brand(),
        recipient_name: "Sam Sample".to_owned(),
        computer_name: "PC-001".to_owned(),
        when: "Tuesday, 3 March 2026 at 22:00 (Europe/Berlin)".to_owned(),
        time_zone: "Europe/Berlin".to_owned(),
        actions: sample_actions(true),
        show_actions: true,
        reboot: RebootExpectation::Will,
        postpone_url: Some("https://upkeep.example/postpone/x".to_owned()),
        update_now_url: Some("https://upkeep.example/postpone/x?action=update-now".to_owned()),
        postpones_left: 2,
        postpone_hours: 24,
        result_summary: Some("1 of 3 actions failed".to_owned()),
        compliant: false,
        postpone_links: vec![ComputerLink {
            computer_name: "PC-002".to_owned(),
            url: "https://upkeep.example/postpone/y".to_owned(),
        }],
    };
    let minimal = SessionMailView {
        brand: Brand::default(),
        recipient_name: String::new(),
        actions: Vec::new(),
        show_actions: false,
        reboot: RebootExpectation::None,
        postpone_url: None,
        update_now_url: None,
        postpones_left: 0,
        result_summary: None,
        compliant: true,
        postpone_links: Vec::new(),
        ..full.clone()
    };
    let middle = SessionMailView {
        actions: sample_actions(false),
        reboot: RebootExpectation::May,
        postpone_url: None,
        postpones_left: 1,
        ..full.clone()
    };
    vec![full, minimal, middle]
}

fn sample_page_views() -> Vec<PostponePageView> {
    let full = PostponePageView {
        brand: sample_brand(),
        state: String::new(),
        computer_name: "PC-001".to_owned(),
        when: "Tuesday, 3 March 2026 at 22:00 (Europe/Berlin)".to_owned(),
        new_when: Some("Wednesday, 4 March 2026 at 22:00 (Europe/Berlin)".to_owned()),
        actions: sample_actions(false),
        show_actions: true,
        reboot: RebootExpectation::May,
        postpones_left: 2,
        postpone_hours: 24,
        allow_update_now: true,
        message: Some("Sample message".to_owned()),
    };
    let mut views = Vec::new();
    for state in PostponeState::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(["unknown"])
    {
        views.push(PostponePageView {
            state: state.to_owned(),
            ..full.clone()
        });
        views.push(PostponePageView {
            brand: Brand::default(),
            state: state.to_owned(),
            computer_name: String::new(),
            when: String::new(),
            new_when: None,
            actions: Vec::new(),
            show_actions: false,
            reboot: RebootExpectation::Will,
            postpones_left: 0,
            postpone_hours: 24,
            allow_update_now: false,
            message: None,
        });
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn brand(company: &str) -> Brand {
        Brand::new(company, None, "#aa0000", "Acme MSP")
    }

    fn session_view(company: &str, computer: &str) -> SessionMailView {
        SessionMailView {
            brand: brand(company),
            recipient_name: "Anna".to_owned(),
            computer_name: computer.to_owned(),
            when: "Tuesday, 3 March 2026 at 22:00 (Europe/Berlin)".to_owned(),
            time_zone: "Europe/Berlin".to_owned(),
            actions: vec![
                ActionView::planned(
                    "7-Zip",
                    PlannedChange::Upgrade {
                        from: Some("1.9.2"),
                        to: Some("1.10.0"),
                    },
                ),
                ActionView::planned(
                    "Firefox",
                    PlannedChange::Install {
                        version: Some("1.10.0"),
                    },
                ),
            ],
            show_actions: true,
            reboot: RebootExpectation::May,
            postpone_url: Some("https://upkeep.example/postpone/tok123".to_owned()),
            update_now_url: Some("https://upkeep.example/postpone/tok123?now=1".to_owned()),
            postpones_left: 3,
            postpone_hours: 24,
            result_summary: None,
            compliant: false,
            postpone_links: Vec::new(),
        }
    }

    fn page_view(state: PostponeState) -> PostponePageView {
        PostponePageView {
            brand: brand("Contoso"),
            state: state.into(),
            computer_name: "PC-42".to_owned(),
            when: "Tuesday, 3 March 2026 at 22:00 (Europe/Berlin)".to_owned(),
            new_when: Some("Wednesday, 4 March 2026 at 22:00 (Europe/Berlin)".to_owned()),
            actions: vec![ActionView::planned("7-Zip", PlannedChange::RunTask)],
            show_actions: true,
            reboot: RebootExpectation::None,
            postpones_left: 1,
            postpone_hours: 24,
            allow_update_now: true,
            message: None,
        }
    }

    #[test]
    fn every_builtin_template_compiles_and_renders() {
        let t = Templates::load(None).expect("built-in templates load");
        for &(file, kind, _) in BUILTIN {
            let name = registry_name(file, kind);
            let registered = match kind {
                Kind::Html => t.html.has_template(&name),
                Kind::Text => t.text.has_template(&name),
                Kind::Partial => t.origins.contains_key(&name),
            };
            assert!(registered, "{file} is registered as {name}");
        }
        for kind in [MailTemplate::Before, MailTemplate::After] {
            let mail = t
                .render_session_mail(kind, &session_view("Contoso", "PC-1"))
                .expect("renders");
            assert!(!mail.subject.is_empty());
            assert!(mail.text.contains("PC-1"));
            assert!(mail.html.contains("PC-1"));
        }
        let test = t
            .render_test_mail(&TestMailView {
                brand: brand("Contoso"),
                recipient: "anna@contoso.example".to_owned(),
            })
            .expect("renders");
        assert!(test.subject.contains("Contoso"));
        assert!(test.text.contains("anna@contoso.example"));
        assert!(test.html.contains("#aa0000"));
    }

    #[test]
    fn html_escapes_and_text_keeps_names_verbatim() {
        let t = Templates::load(None).expect("load");
        let view = session_view(
            "A&B <script>alert(1)</script>",
            "PC <script>x</script> & co",
        );
        let mail = t
            .render_session_mail(MailTemplate::Before, &view)
            .expect("renders");
        assert!(!mail.html.contains("<script>"), "{}", mail.html);
        assert!(mail.html.contains("A&amp;B &lt;script&gt;"));
        assert!(
            mail.html
                .contains("PC &lt;script&gt;x&lt;/script&gt; &amp; co")
        );
        assert!(mail.text.contains("A&B <script>alert(1)</script>"));
        assert!(mail.text.contains("PC <script>x</script> & co"));
        assert!(!mail.text.contains("&amp;"));
        assert!(mail.subject.contains("PC <script>x</script> & co"));
        assert!(mail.text.contains("Upgrade 1.9.2 → 1.10.0"));
        assert!(mail.html.contains("1.9.2 → 1.10.0"));
        assert!(mail.text.contains("Your computer may restart."));
    }

    #[test]
    fn subject_has_no_line_breaks_even_with_hostile_names() {
        let t = Templates::load(None).expect("load");
        let hostile = "PC\r\nBcc: evil@x";
        let mut view = session_view("Evil\r\nCo\u{0}", hostile);
        view.result_summary = Some("done\nX-Header: y".to_owned());
        for kind in [MailTemplate::Before, MailTemplate::After] {
            let mail = t.render_session_mail(kind, &view).expect("renders");
            assert!(
                !mail.subject.chars().any(|c| c.is_control()),
                "{:?}",
                mail.subject
            );
            assert!(
                mail.subject.contains("PC Bcc: evil@x"),
                "{:?}",
                mail.subject
            );
        }
        let test = t
            .render_test_mail(&TestMailView {
                brand: brand("Evil\r\nBcc: evil@x"),
                recipient: "a@b".to_owned(),
            })
            .expect("renders");
        assert_eq!(test.subject, "Evil Bcc: evil@x: test message");
    }

    #[test]
    fn broken_override_fails_load_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("maintenance-before.html.hbs");
        std::fs::write(&path, "<p>{{#if computerName}}unclosed</p>\n").expect("write");
        let err = Templates::load(Some(dir.path())).expect_err("broken template");
        match &err {
            TemplateError::Invalid { name, message } => {
                assert!(name.contains("maintenance-before.html.hbs"), "{name}");
                assert!(!message.is_empty());
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("maintenance-before.html.hbs"));
    }

    #[test]
    fn override_with_unknown_variable_fails_load_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("partials")).expect("mkdir");
        let path = dir.path().join("partials").join("footer-txt.hbs");
        std::fs::write(&path, "Bye {{brand.nosuchfield}}\n").expect("write");
        let err = Templates::load(Some(dir.path())).expect_err("strict mode");
        match err {
            TemplateError::Invalid { name, .. } => {
                assert!(name.ends_with("footer-txt.hbs"), "{name}")
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn override_file_replaces_builtin_and_others_fall_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("maintenance-before.subject.hbs"),
            "Custom: {{computerName}}",
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("partials")).expect("mkdir");
        std::fs::write(
            dir.path().join("partials").join("footer-txt.hbs"),
            "Custom footer\n",
        )
        .expect("write");
        let t = Templates::load(Some(dir.path())).expect("load");
        let mail = t
            .render_session_mail(MailTemplate::Before, &session_view("Contoso", "PC-7"))
            .expect("renders");
        assert_eq!(mail.subject, "Custom: PC-7");
        assert!(mail.text.ends_with("Custom footer\n"), "{}", mail.text);
        assert!(mail.html.contains("Planned maintenance"));
    }

    #[test]
    fn missing_templates_dir_is_an_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = Templates::load(Some(&missing)).expect_err("missing dir");
        assert!(matches!(err, TemplateError::Io { .. }), "{err:?}");
    }

    #[test]
    fn postpone_link_only_when_offered() {
        let t = Templates::load(None).expect("load");
        let mut view = session_view("Contoso", "PC-1");
        let with = t
            .render_session_mail(MailTemplate::Before, &view)
            .expect("renders");
        assert!(with.html.contains("https://upkeep.example/postpone/tok123"));
        assert!(
            with.text
                .contains("https://upkeep.example/postpone/tok123\n")
        );
        assert!(with.html.contains(">Postpone</a>"));
        view.postpone_url = None;
        view.update_now_url = None;
        let without = t
            .render_session_mail(MailTemplate::Before, &view)
            .expect("renders");
        assert!(!without.html.contains("/postpone/"), "{}", without.html);
        assert!(!without.text.contains("/postpone/"));
        assert!(!without.html.contains(">Postpone</a>"));
        assert!(!without.text.contains("postpone"));
    }

    #[test]
    fn every_postpone_page_state_renders() {
        let t = Templates::load(None).expect("load");
        let expect = [
            (PostponeState::Confirm, "Planned maintenance"),
            (PostponeState::Postponed, "Wednesday, 4 March 2026 at 22:00"),
            (PostponeState::Updating, "will start shortly"),
            (PostponeState::Used, "already been used"),
            (PostponeState::Expired, "has expired"),
            (PostponeState::Invalid, "not valid"),
            (PostponeState::Limit, "cannot be postponed again"),
            (PostponeState::TooLate, "too late to postpone"),
        ];
        for (state, text) in expect {
            let page = t.render_postpone_page(&page_view(state)).expect("renders");
            assert!(page.starts_with("<!DOCTYPE html>"), "{state:?}");
            assert!(page.contains(text), "{state:?} lacks {text:?}");
            assert!(!page.contains("<script"), "{state:?}");
        }
        let confirm = t
            .render_postpone_page(&page_view(PostponeState::Confirm))
            .expect("renders");
        assert!(confirm.contains(r#"<form method="post">"#));
        assert!(confirm.contains(r#"name="action" value="postpone""#));
        assert!(confirm.contains(r#"name="action" value="update-now""#));
        let mut no_update = page_view(PostponeState::Confirm);
        no_update.allow_update_now = false;
        let page = t.render_postpone_page(&no_update).expect("renders");
        assert!(!page.contains(r#"value="update-now""#));
        for state in PostponeState::ALL {
            if matches!(state, PostponeState::Confirm | PostponeState::Limit) {
                continue;
            }
            let page = t.render_postpone_page(&page_view(state)).expect("renders");
            assert!(!page.contains("<form"), "{state:?} offers no form");
        }
        let unknown = PostponePageView {
            state: "bogus".to_owned(),
            ..page_view(PostponeState::Confirm)
        };
        let page = t.render_postpone_page(&unknown).expect("renders");
        assert!(page.contains("Something went wrong"));
    }

    #[test]
    fn after_mail_lists_outcomes_and_result() {
        let t = Templates::load(None).expect("load");
        let mut view = session_view("Contoso", "PC-1");
        view.actions = vec![
            ActionView::planned(
                "7-Zip",
                PlannedChange::Upgrade {
                    from: Some("1.9.2"),
                    to: Some("1.10.0"),
                },
            )
            .with_outcome(ActionOutcome::Succeeded, None),
            ActionView::planned("Firefox", PlannedChange::Install { version: None })
                .with_outcome(ActionOutcome::Failed, Some("exit code 1\nstderr: boom")),
        ];
        view.result_summary = Some("1 of 2 actions failed".to_owned());
        view.reboot = RebootExpectation::Will;
        let mail = t
            .render_session_mail(MailTemplate::After, &view)
            .expect("renders");
        assert_eq!(
            mail.subject,
            "Maintenance on PC-1 finished: 1 of 2 actions failed"
        );
        assert!(
            mail.text
                .contains("7-Zip: Upgrade 1.9.2 → 1.10.0 ... Succeeded")
        );
        assert!(mail.text.contains("Firefox: Install ... Failed"));
        assert!(mail.text.contains("exit code 1 stderr: boom"));
        assert!(mail.text.contains("Result: 1 of 2 actions failed"));
        assert!(mail.html.contains("Failed"));
        assert!(!mail.text.contains("/postpone/"));
    }

    #[test]
    fn brand_colour_cannot_inject_css() {
        let t = Templates::load(None).expect("load");
        let mut view = session_view("Contoso", "PC-1");
        view.brand.primary_color = "red;}</style><script>x</script>".to_owned();
        view.brand.logo_url = Some("javascript:alert(1)".to_owned());
        let mail = t
            .render_session_mail(MailTemplate::Before, &view)
            .expect("renders");
        assert!(mail.html.contains(DEFAULT_PRIMARY_COLOR));
        assert!(!mail.html.contains("red;"));
        assert!(!mail.html.contains("javascript:"));
        assert_eq!(sanitize_color(" #A1B2C3 "), "#a1b2c3");
        assert_eq!(sanitize_color("#fff"), DEFAULT_PRIMARY_COLOR);
    }

    #[test]
    fn light_primary_gets_dark_text() {
        assert_eq!(derived_colors("#ffff00").0, "#111827");
        assert_eq!(derived_colors("#ffff00").1, Some("#1f2937"));
        assert_eq!(derived_colors("#1a1a7a"), ("#ffffff", None));
    }

    #[test]
    fn format_when_uses_the_time_zone() {
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 3, 3, 21, 0, 0)
            .single()
            .expect("valid time");
        assert_eq!(
            format_when(t, chrono_tz::Europe::Berlin),
            "Tuesday, 3 March 2026 at 22:00 CET"
        );
        assert_eq!(
            format_when(t, chrono_tz::UTC),
            "Tuesday, 3 March 2026 at 21:00 UTC"
        );
    }

    #[test]
    fn text_is_tidied() {
        assert_eq!(tidy_text("\n\na  \n\n\n\nb\n\n"), "a\n\nb\n");
    }
}
