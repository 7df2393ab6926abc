//! Versions scripts: a software's list of available versions, discovered on a computer instead
//! of written by hand. The script prints one JSON object per line,
//! `{"version", "url", "sha256", "size", "releasedAt"}` (all but `version` optional); for one
//! session the versions it printed are the software's versions (`INSTALLED_LATEST` means the
//! newest of them), installed by the software-level install and upgrade scripts. A script that
//! fails, or prints anything this module refuses, leaves the static versions in force.

use crate::domain::{Id, Time};
use crate::session::SoftwareSnapshot;
use serde::{Deserialize, Serialize};

/// Most versions one script may print; more is refused (a script gone wrong).
pub const MAX_VERSIONS: usize = 500;
/// Longest version text.
pub const MAX_VERSION_CHARS: usize = 100;
/// Longest download URL.
pub const MAX_URL_CHARS: usize = 2048;

/// One version a versions script printed, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovered {
    pub version: String,
    /// Where the installer is: `https://` only; then `sha256` is required, so the agent can
    /// verify the download before it runs anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// As the script printed it (for people; not interpreted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
}

/// What a software's versions script last said on a computer of one tenant, kept for
/// `versionsCacheMinutes` so that that tenant's sessions in that time need not run it again.
/// Kept per tenant: an answer comes from a managed computer, so a computer may decide what its
/// own tenant's computers are offered, never another tenant's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionsCache {
    pub tenant_id: Id,
    pub software_id: Id,
    pub versions: Vec<Discovered>,
    pub fetched_at: Time,
}

impl VersionsCache {
    /// Whether the cached answer still stands at `now` for a software caching `minutes`.
    pub fn fresh(&self, now: Time, minutes: u32) -> bool {
        now.signed_duration_since(self.fetched_at) < chrono::Duration::minutes(minutes.into())
            && now >= self.fetched_at
    }
}

/// The line of a script's output as printed (unknown fields are ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    version: serde_json::Value,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    released_at: Option<String>,
}

/// The versions a script printed, in the order printed, each version once (the first line
/// wins). Blank lines are skipped; any other line that is not a valid version object fails the
/// whole answer, naming the line: half-understood output must not decide what gets installed.
pub fn parse(stdout: &str) -> Result<Vec<Discovered>, String> {
    let mut out: Vec<Discovered> = Vec::new();
    for (n, raw) in stdout.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let d = parse_line(raw).map_err(|e| format!("line {}: {e}", n + 1))?;
        if out
            .iter()
            .any(|x| crate::version::compare(&x.version, &d.version).is_eq())
        {
            continue;
        }
        if out.len() == MAX_VERSIONS {
            return Err(format!("more than {MAX_VERSIONS} versions"));
        }
        out.push(d);
    }
    if out.is_empty() {
        return Err("it printed no versions".into());
    }
    Ok(out)
}

fn parse_line(raw: &str) -> Result<Discovered, String> {
    let line: Line = serde_json::from_str(raw).map_err(|e| format!("not a version object: {e}"))?;
    let version = match line.version {
        serde_json::Value::String(s) => s.trim().to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err("\"version\" must be a string".into()),
    };
    if version.is_empty() || version.chars().count() > MAX_VERSION_CHARS {
        return Err(format!(
            "\"version\" must be 1 to {MAX_VERSION_CHARS} characters"
        ));
    }
    if version.chars().any(char::is_control) {
        return Err("\"version\" holds a control character".into());
    }
    let sha256 = match line.sha256 {
        Some(h) => {
            let h = h.trim().to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("\"sha256\" must be 64 hex digits".into());
            }
            Some(h)
        }
        None => None,
    };
    if let Some(url) = &line.url {
        if !url.starts_with("https://") || url.len() > MAX_URL_CHARS {
            return Err(format!(
                "\"url\" must be https:// and at most {MAX_URL_CHARS} characters"
            ));
        }
        if sha256.is_none() {
            return Err("a \"url\" needs its \"sha256\"".into());
        }
    }
    Ok(Discovered {
        version,
        url: line.url,
        sha256,
        size: line.size,
        released_at: line
            .released_at
            .map(|r| r.chars().take(64).collect::<String>()),
    })
}

/// The snapshot's versions for this session: those discovered, each installed (upgraded) by
/// the software-level scripts. `None` when the software has no install script to run them.
pub fn effective(
    sw: &SoftwareSnapshot,
    found: &[Discovered],
) -> Option<Vec<crate::domain::SoftwareVersion>> {
    let install = sw.install_script.as_ref()?;
    Some(
        found
            .iter()
            .map(|d| crate::domain::SoftwareVersion {
                version: d.version.clone(),
                install_script: install.clone(),
                upgrade_script: sw.upgrade_script.clone(),
                installer: download(d),
            })
            .collect(),
    )
}

/// The download a line names: its `https://` URL with the SHA-256 (and size) the agent checks
/// before the script runs. A `sha256` without a `url` names nothing: a managed computer must not
/// be able to point its agent at a file of the server's store by its hash.
pub fn download(d: &Discovered) -> Option<crate::domain::Installer> {
    let url = d.url.clone()?;
    let file_name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .map(|n| n.replace("%20", " "));
    Some(crate::domain::Installer {
        sha256: d.sha256.clone()?,
        size: d.size,
        url: Some(url),
        file_name,
    })
}

/// The newest of `found` (for people: "newest 2.1").
pub fn newest(found: &[Discovered]) -> Option<&str> {
    found
        .iter()
        .map(|d| d.version.as_str())
        .max_by(|a, b| crate::version::compare(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn reads_lines_with_and_without_downloads() {
        let out = format!(
            "{{\"version\":\"2.1\",\"url\":\"https://x.example/a.msi\",\"sha256\":\"{}\",\"size\":5}}\n\n{{\"version\":\"2.0\",\"releasedAt\":\"2026-01-01\",\"extra\":1}}\n",
            H.to_uppercase()
        );
        let v = parse(&out).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].sha256.as_deref(), Some(H));
        assert_eq!(v[0].size, Some(5));
        assert_eq!(v[1].released_at.as_deref(), Some("2026-01-01"));
        assert_eq!(newest(&v), Some("2.1"));
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        for (bad, why) in [
            ("2.1", "not a version object"),
            ("{\"url\":\"https://x\"}", "not a version object"),
            ("{\"version\":\"\"}", "1 to"),
            ("{\"version\":[1]}", "must be a string"),
            (
                "{\"version\":\"1\",\"url\":\"http://x/a\",\"sha256\":\"00\"}",
                "64 hex",
            ),
            (
                &format!("{{\"version\":\"1\",\"url\":\"http://x/a\",\"sha256\":\"{H}\"}}"),
                "https://",
            ),
            ("{\"version\":\"1\",\"url\":\"https://x/a\"}", "needs its"),
            ("", "no versions"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // One bad line spoils the answer, named by its number.
        let e = parse("{\"version\":\"0.1\"}\nnot json").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let many: String = (0..=MAX_VERSIONS)
            .map(|i| format!("{{\"version\":\"1.{i}\"}}\n"))
            .collect();
        assert!(parse(&many).unwrap_err().contains("more than"));
    }

    #[test]
    fn a_line_with_a_url_names_its_download() {
        let v = parse(&format!(
            "{{\"version\":\"2\",\"url\":\"https://x.example/a/Setup%202.msi?x=1\",\"sha256\":\"{H}\",\"size\":7}}\n{{\"version\":\"1\",\"sha256\":\"{H}\"}}\n"
        ))
        .unwrap();
        let i = download(&v[0]).unwrap();
        assert_eq!(
            (i.sha256.as_str(), i.size, i.file_name.as_deref()),
            (H, Some(7), Some("Setup 2.msi"))
        );
        assert_eq!(download(&v[1]), None);
    }

    #[test]
    fn a_version_printed_twice_counts_once() {
        let v = parse("{\"version\":\"1.0\"}\n{\"version\":\"1.0.0\",\"size\":3}\n").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].size, None);
    }

    #[test]
    fn the_cache_stands_for_its_minutes() {
        let t = chrono::Utc::now();
        let c = VersionsCache {
            tenant_id: Id::from_u128(2),
            software_id: Id::from_u128(1),
            versions: vec![],
            fetched_at: t,
        };
        assert!(c.fresh(t + chrono::Duration::minutes(59), 60));
        assert!(!c.fresh(t + chrono::Duration::minutes(60), 60));
        assert!(!c.fresh(t, 0));
        assert!(!c.fresh(t - chrono::Duration::minutes(1), 60));
    }
}
