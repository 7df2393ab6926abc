//! Which program runs a script of each language on this OS, and the bytes of its script file.
//! Pure (the OS and what is installed come in as arguments), so both systems' rules are
//! tested everywhere.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::path::Path;
use upkeep_agent_protocol::ScriptLanguage;

/// What an agent on another OS answers for a `CMD` script.
pub(crate) const CMD_NEEDS_WINDOWS: &str = "CMD scripts need a Windows agent";

/// PowerShell's arguments before the script path: no profile, no prompts, and no execution
/// policy standing between the server's script and its run (the script is the server's word).
pub(crate) const POWERSHELL_ARGS: &[&str] = &[
    "-NoProfile",
    "-NonInteractive",
    "-ExecutionPolicy",
    "Bypass",
    "-File",
];

/// The OS an agent runs on, as far as scripts are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Os {
    Unix,
    Windows,
}

impl Os {
    pub(crate) const CURRENT: Os = if cfg!(windows) { Os::Windows } else { Os::Unix };
}

/// How to start a script of one language: `program args… script-file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interpreter {
    pub(crate) program: &'static str,
    pub(crate) args: &'static [&'static str],
    /// `pwsh -File` refuses files without `.ps1`; `cmd` runs only `.cmd`/`.bat` files.
    pub(crate) extension: &'static str,
}

/// The interpreter for `language` on `os`; `pwsh_installed` says whether `pwsh` is on the
/// `PATH` (on Windows, Windows PowerShell 5.1 stands in when it is not). An error is the
/// message the script's outcome reports.
pub(crate) fn interpreter(
    language: ScriptLanguage,
    os: Os,
    pwsh_installed: bool,
) -> Result<Interpreter, &'static str> {
    let (program, args, extension) = match (language, os) {
        (ScriptLanguage::Shell, _) => ("sh", &[][..], "sh"),
        (ScriptLanguage::Python, Os::Unix) => ("python3", &[][..], "py"),
        // python.org's installer puts `python.exe` on the PATH; `python3.exe` is often only
        // the Store's placeholder.
        (ScriptLanguage::Python, Os::Windows) => ("python", &[][..], "py"),
        (ScriptLanguage::Powershell, Os::Windows) if !pwsh_installed => {
            ("powershell.exe", POWERSHELL_ARGS, "ps1")
        }
        (ScriptLanguage::Powershell, _) => ("pwsh", POWERSHELL_ARGS, "ps1"),
        // `/D`: no AutoRun commands from the registry; `/C`: run the file, then exit with its
        // exit code.
        (ScriptLanguage::Cmd, Os::Windows) => ("cmd.exe", &["/D", "/C"][..], "cmd"),
        (ScriptLanguage::Cmd, Os::Unix) => return Err(CMD_NEEDS_WINDOWS),
    };
    Ok(Interpreter {
        program,
        args,
        extension,
    })
}

/// [`interpreter`] for this computer, looking for `pwsh` on the `PATH` on Windows.
pub(crate) fn for_this_computer(language: ScriptLanguage) -> Result<Interpreter, &'static str> {
    let pwsh = Os::CURRENT == Os::Unix
        || on_path(
            "pwsh.exe",
            std::env::var_os("PATH").as_deref().unwrap_or_default(),
        );
    interpreter(language, Os::CURRENT, pwsh)
}

/// Whether a file `name` is in one of the directories of `path` (a `PATH` value).
pub(crate) fn on_path(name: &str, path: &OsStr) -> bool {
    std::env::split_paths(path).any(|dir| !dir.as_os_str().is_empty() && is_file(&dir.join(name)))
}

fn is_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file())
}

/// The script file's bytes: batch files get CRLF line ends (`cmd` misreads labels and `goto`
/// in LF-only files) and are written in the console's code page, which `cmd` reads them in,
/// when `encode_batch` can (else as UTF-8); PowerShell files get a UTF-8 byte-order mark
/// (Windows PowerShell 5.1 reads a file without one in the ANSI code page).
pub(crate) fn script_file_bytes(
    language: ScriptLanguage,
    body: &str,
    encode_batch: fn(&str) -> Option<Vec<u8>>,
) -> Vec<u8> {
    match language {
        ScriptLanguage::Cmd => {
            let mut out = String::with_capacity(body.len() + body.len() / 16);
            for line in body.split_inclusive('\n') {
                match line.strip_suffix('\n') {
                    Some(text) => {
                        out.push_str(text.strip_suffix('\r').unwrap_or(text));
                        out.push_str("\r\n");
                    }
                    None => out.push_str(line),
                }
            }
            encode_batch(&out).unwrap_or_else(|| out.into_bytes())
        }
        ScriptLanguage::Powershell => [&[0xEF, 0xBB, 0xBF][..], body.as_bytes()].concat(),
        ScriptLanguage::Shell | ScriptLanguage::Python => body.as_bytes().to_vec(),
    }
}

/// The script with `$InstallerFile` set from `UPKEEP_INSTALLER_FILE` first, for PowerShell
/// (other languages read the environment variable). A PowerShell script that opens with a
/// `param(...)` block keeps it first, as PowerShell requires; the line follows the block.
pub(crate) fn with_installer_variable(language: ScriptLanguage, body: &str) -> Cow<'_, str> {
    const LINE: &str = "$InstallerFile = $env:UPKEEP_INSTALLER_FILE\n";
    if language != ScriptLanguage::Powershell {
        return Cow::Borrowed(body);
    }
    match param_block_end(body) {
        Some(end) => Cow::Owned(format!("{}\n{LINE}{}", &body[..end], &body[end..])),
        None => Cow::Owned(format!("{LINE}{body}")),
    }
}

/// Where a leading `param(...)` block ends (after its closing parenthesis), when the script
/// starts with one (after blank lines, comments and attributes are not looked into).
fn param_block_end(body: &str) -> Option<usize> {
    let start = body.len() - body.trim_start().len();
    let rest = &body[start..];
    if !rest.get(..5)?.eq_ignore_ascii_case("param") {
        return None;
    }
    let open = start + 5 + rest[5..].find('(')?;
    if !body[start + 5..open].trim().is_empty() {
        return None;
    }
    let mut depth = 0usize;
    for (i, c) in body[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_runs_batch_powershell_and_python() {
        let cmd = interpreter(ScriptLanguage::Cmd, Os::Windows, false);
        assert_eq!(
            cmd.map(|i| (i.program, i.args, i.extension)),
            Ok(("cmd.exe", &["/D", "/C"][..], "cmd"))
        );
        let ps = interpreter(ScriptLanguage::Powershell, Os::Windows, false);
        assert_eq!(
            ps.map(|i| (i.program, i.args, i.extension)),
            Ok(("powershell.exe", POWERSHELL_ARGS, "ps1"))
        );
        let pwsh = interpreter(ScriptLanguage::Powershell, Os::Windows, true);
        assert_eq!(pwsh.map(|i| i.program), Ok("pwsh"));
        let py = interpreter(ScriptLanguage::Python, Os::Windows, false);
        assert_eq!(py.map(|i| (i.program, i.extension)), Ok(("python", "py")));
        assert_eq!(
            POWERSHELL_ARGS,
            [
                "-NoProfile",
                "-NonInteractive",
                "-ExecutionPolicy",
                "Bypass",
                "-File"
            ]
        );
    }

    #[test]
    fn unix_refuses_batch_and_runs_the_rest() {
        assert_eq!(
            interpreter(ScriptLanguage::Cmd, Os::Unix, true),
            Err(CMD_NEEDS_WINDOWS)
        );
        let sh = interpreter(ScriptLanguage::Shell, Os::Unix, false);
        assert_eq!(sh.map(|i| (i.program, i.extension)), Ok(("sh", "sh")));
        let py = interpreter(ScriptLanguage::Python, Os::Unix, false);
        assert_eq!(py.map(|i| i.program), Ok("python3"));
        // Unix has no Windows PowerShell to fall back to: pwsh or an error naming it.
        let ps = interpreter(ScriptLanguage::Powershell, Os::Unix, false);
        assert_eq!(
            ps.map(|i| (i.program, i.args)),
            Ok(("pwsh", POWERSHELL_ARGS))
        );
    }

    #[test]
    fn pwsh_is_found_on_the_path() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let empty = tempfile::tempdir()?;
        std::fs::write(dir.path().join("pwsh.exe"), b"")?;
        let path =
            std::env::join_paths([empty.path(), dir.path()]).map_err(std::io::Error::other)?;
        assert!(on_path("pwsh.exe", &path));
        let only_empty = std::env::join_paths([empty.path()]).map_err(std::io::Error::other)?;
        assert!(!on_path("pwsh.exe", &only_empty));
        assert!(!on_path("pwsh.exe", OsStr::new("")));
        Ok(())
    }

    fn utf8_only(_: &str) -> Option<Vec<u8>> {
        None
    }

    /// Code page 437 for the one letter the test needs.
    fn cp437(text: &str) -> Option<Vec<u8>> {
        text.chars()
            .map(|c| match c {
                'é' => Some(0x82),
                c if c.is_ascii() => u8::try_from(c).ok(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn batch_files_get_crlf_and_the_console_code_page() {
        assert_eq!(
            script_file_bytes(
                ScriptLanguage::Cmd,
                "@echo off\nexit /b 3\r\n:end",
                utf8_only
            ),
            b"@echo off\r\nexit /b 3\r\n:end"
        );
        assert_eq!(
            script_file_bytes(ScriptLanguage::Cmd, "echo café\n", cp437),
            b"echo caf\x82\r\n"
        );
        // A letter the code page lacks: the file stays UTF-8 rather than lose it.
        assert_eq!(
            script_file_bytes(ScriptLanguage::Cmd, "echo ✓", cp437),
            "echo ✓".as_bytes()
        );
    }

    #[test]
    fn powershell_gets_installer_file_after_any_param_block() {
        assert_eq!(
            with_installer_variable(ScriptLanguage::Powershell, "Start-Process $InstallerFile"),
            "$InstallerFile = $env:UPKEEP_INSTALLER_FILE\nStart-Process $InstallerFile"
        );
        assert_eq!(
            with_installer_variable(ScriptLanguage::Powershell, "\nParam([string]$A = (1))\nrun"),
            "\nParam([string]$A = (1))\n$InstallerFile = $env:UPKEEP_INSTALLER_FILE\n\nrun"
        );
        assert_eq!(
            with_installer_variable(ScriptLanguage::Shell, "echo $UPKEEP_INSTALLER_FILE"),
            "echo $UPKEEP_INSTALLER_FILE"
        );
    }

    #[test]
    fn powershell_files_get_a_bom_and_others_stay_as_written() {
        assert_eq!(
            script_file_bytes(ScriptLanguage::Powershell, "Write-Output 'é'", cp437),
            [&[0xEF, 0xBB, 0xBF][..], "Write-Output 'é'".as_bytes()].concat()
        );
        assert_eq!(
            script_file_bytes(ScriptLanguage::Shell, "echo é\n", cp437),
            "echo é\n".as_bytes()
        );
    }
}
