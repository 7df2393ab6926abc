//! The views templates render: the brand (sanitized on its way to a template), session mails'
//! actions, the test mail and the postpone page.

use serde::Serialize;

use super::{DEFAULT_PRIMARY_COLOR, one_line};

/// Longest action message kept by [`ActionView::with_outcome`], in characters.
const MAX_ACTION_MESSAGE_CHARS: usize = 300;

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

impl Brand {
    /// The brand colour as a valid `#rrggbb`, and the text colour that reads on it (what the
    /// templates get as `primaryColor` and `onPrimaryColor`).
    pub fn colors(&self) -> (String, &'static str) {
        let primary = sanitize_color(&self.primary_color);
        let (on_primary, _) = derived_colors(&primary);
        (primary, on_primary)
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
    /// After-mail: a reboot is still pending on the computer; the link leads to a page that
    /// asks to confirm, then reboots it.
    pub reboot_now_url: Option<String>,
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
    /// GET of a "Reboot now" link: a reboot is pending; confirm it.
    RebootConfirm,
    /// POST of a "Reboot now" link: the reboot is on its way.
    Rebooting,
    /// A "Reboot now" link when no reboot is pending any more.
    RebootDone,
}

impl PostponeState {
    pub const ALL: [PostponeState; 11] = [
        PostponeState::Confirm,
        PostponeState::Postponed,
        PostponeState::Updating,
        PostponeState::Used,
        PostponeState::Expired,
        PostponeState::Invalid,
        PostponeState::Limit,
        PostponeState::TooLate,
        PostponeState::RebootConfirm,
        PostponeState::Rebooting,
        PostponeState::RebootDone,
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
            PostponeState::RebootConfirm => "reboot-confirm",
            PostponeState::Rebooting => "rebooting",
            PostponeState::RebootDone => "reboot-done",
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
pub(super) fn derived_colors(primary: &str) -> (&'static str, Option<&'static str>) {
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
