//! `InstallerInput`: a version's installer, an uploaded file or a vendor's HTTPS download.

use crate::error::{ApiError, ApiResult};
use crate::services::files::Files;
use async_graphql::InputObject;
use upkeep_core::domain::{Installer, SoftwareVersion};

/// Longest vendor URL taken.
const MAX_URL: usize = 2048;

/// Longest file name taken.
const MAX_FILE_NAME: usize = 255;

/// Either a file uploaded before (`POST /api/v1/files` or `uploadInstaller`: give its
/// `sha256`, and `fileName` if you like), or a vendor download (`url`, `https://` only, with
/// its `sha256` and `size`), which the agent fetches itself. The agent checks the size and
/// SHA-256 before it runs the install or upgrade script.
#[derive(InputObject)]
pub struct InstallerInput {
    /// 64 hex digits.
    pub sha256: String,
    /// The file name scripts see (default: from the upload or the URL).
    pub file_name: Option<String>,
    /// A vendor's `https://` URL (with `sha256` and `size`); leave out for an uploaded file.
    pub url: Option<String>,
    /// Bytes; required with `url`, checked against the stored file without.
    pub size: Option<i64>,
}

impl InstallerInput {
    /// The checks that need nothing but the input; whether an uploaded file exists is
    /// [`check_stored`]'s.
    pub fn validate(&self, field: &str) -> ApiResult<Installer> {
        let sha256 = self.sha256.trim().to_ascii_lowercase();
        if !Installer::is_sha256(&sha256) {
            return Err(ApiError::bad(
                &format!("{field}.sha256"),
                "a SHA-256 is 64 hex digits",
            ));
        }
        let file_name = match self.file_name.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(n) if n.chars().count() > MAX_FILE_NAME => {
                return Err(ApiError::bad(
                    &format!("{field}.fileName"),
                    format!("at most {MAX_FILE_NAME} characters"),
                ));
            }
            Some(n) if n.chars().any(|c| c.is_control() || c == '/' || c == '\\') => {
                return Err(ApiError::bad(
                    &format!("{field}.fileName"),
                    "a file name, without directories or control characters",
                ));
            }
            Some(n) => Some(n.to_string()),
        };
        let size = match self.size {
            None => None,
            Some(n) if n > 0 => Some(n as u64),
            Some(_) => {
                return Err(ApiError::bad(&format!("{field}.size"), "must be positive"));
            }
        };
        let url = match self.url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => Some(vendor_url(&format!("{field}.url"), u)?),
        };
        if url.is_some() && size.is_none() {
            return Err(ApiError::bad(
                &format!("{field}.size"),
                "give the size of a download from a URL (the agent checks it)",
            ));
        }
        Ok(Installer {
            sha256,
            size,
            url,
            file_name,
        })
    }
}

fn vendor_url(field: &str, u: &str) -> ApiResult<String> {
    if u.len() > MAX_URL {
        return Err(ApiError::bad(
            field,
            format!("at most {MAX_URL} characters"),
        ));
    }
    let parsed = url::Url::parse(u).map_err(|e| ApiError::bad(field, format!("not a URL: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(ApiError::bad(
            field,
            "agents download installers over https:// only",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad(field, "the URL names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::bad(
            field,
            "the URL must not carry credentials (agents log it)",
        ));
    }
    Ok(parsed.to_string())
}

/// Every installer without a URL must name a file the server holds; its size comes from the
/// store (a different `size` given is refused).
pub async fn check_stored(files: &Files, versions: &mut [SoftwareVersion]) -> ApiResult<()> {
    for (i, v) in versions.iter_mut().enumerate() {
        let Some(inst) = v.installer.as_mut().filter(|i| i.url.is_none()) else {
            continue;
        };
        let field = format!("versions[{i}].installer");
        let stored = files
            .size_of(&inst.sha256)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::bad(
                    &format!("{field}.sha256"),
                    format!(
                        "no uploaded file has SHA-256 {}; upload it first (POST /api/v1/files or uploadInstaller), or give its url",
                        inst.sha256
                    ),
                )
            })?;
        if inst.size.is_some_and(|s| s != stored) {
            return Err(ApiError::bad(
                &format!("{field}.size"),
                format!("the uploaded file has {stored} bytes"),
            ));
        }
        inst.size = Some(stored);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(sha: &str, url: Option<&str>, size: Option<i64>) -> InstallerInput {
        InstallerInput {
            sha256: sha.into(),
            file_name: Some("setup.msi".into()),
            url: url.map(Into::into),
            size,
        }
    }

    #[test]
    fn installers_are_checked_field_by_field() {
        let sha = "AB".repeat(32);
        let ok = input(&sha, None, None).validate("v").expect("valid");
        assert_eq!(ok.sha256, "ab".repeat(32));
        assert_eq!(ok.file_name.as_deref(), Some("setup.msi"));
        let url = input(&sha, Some("https://vendor.example/x.msi"), Some(10))
            .validate("v")
            .expect("valid");
        assert_eq!(url.url.as_deref(), Some("https://vendor.example/x.msi"));
        let field = |r: ApiResult<Installer>| match r {
            Err(ApiError::BadInput { field, .. }) => field,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(field(input("abc", None, None).validate("v")), "v.sha256");
        assert_eq!(
            field(input(&sha, Some("http://vendor.example/x"), Some(1)).validate("v")),
            "v.url"
        );
        assert_eq!(
            field(input(&sha, Some("https://vendor.example/x"), None).validate("v")),
            "v.size"
        );
        assert_eq!(
            field(input(&sha, Some("https://u:p@vendor.example/x"), Some(1)).validate("v")),
            "v.url"
        );
        assert_eq!(field(input(&sha, None, Some(0)).validate("v")), "v.size");
        let mut bad_name = input(&sha, None, None);
        bad_name.file_name = Some("../x.msi".into());
        assert_eq!(field(bad_name.validate("v")), "v.fileName");
    }
}
