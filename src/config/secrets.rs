//! Secrets in the config: strength, `*_file` resolution, and who may read a secret file.

use std::path::Path;

use super::{leaf, ConfigError, Secret};

/// Secrets a person types when told to fill one in; refused whatever their length.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "secret",
    "password",
    "…",
    "...",
    "<secret>",
    "your-secret",
];

/// The shortest key a secret may give (DESIGN §5; Standard Webhooks' range is 24–64 bytes).
pub const MIN_KEY_BYTES: usize = 24;

/// A secret must give a key of at least [`MIN_KEY_BYTES`] and not be a placeholder: anyone who
/// knows the key opens the doors.
pub(super) fn strong_secret(key: String, secret: &Secret) -> Result<(), ConfigError> {
    let text = secret.expose().trim();
    let hint = "generate one with `echo whsec_$(head -c 32 /dev/urandom | base64)`";
    if PLACEHOLDERS.iter().any(|p| text.eq_ignore_ascii_case(p)) {
        return Err(ConfigError::key(
            key,
            format!("is a placeholder, not a secret; {hint}"),
        ));
    }
    let k = crate::signing::Key::from_secret(secret.expose())
        .map_err(|e| ConfigError::key(key.clone(), e.to_string()))?;
    if k.len() < MIN_KEY_BYTES {
        return Err(ConfigError::key(
            key,
            format!(
                "gives a {}-byte key; at least {MIN_KEY_BYTES} bytes are needed; {hint}",
                k.len()
            ),
        ));
    }
    Ok(())
}

/// Resolves a `secret` / `secret_file` pair: at most one may be set; a file's trailing newline
/// is removed (editors and `echo` add one).
pub(super) fn one_secret(
    key: &str,
    inline: Option<Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::key(
            key,
            format!("set `{}` or `{}_file`, not both", leaf(key), leaf(key)),
        )),
        (Some(s), None) => Ok(Some(s)),
        (None, Some(path)) => {
            private_file(&format!("{key}_file"), path)?;
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::key(
                    format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            Ok(Some(Secret::new(value)))
        }
        (None, None) => Ok(None),
    }
}

/// Refuses a secret file that is a symlink or that users other than its owner and group can
/// read or write (as OpenSSH does with a private key): a secret others can read is no secret,
/// and a symlink may point wherever whoever made it wanted.
pub(super) fn private_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| ConfigError::key(key, format!("cannot read {}: {e}", path.display())))?;
    if meta.file_type().is_symlink() {
        return Err(ConfigError::key(
            key,
            format!(
                "{} is a symlink; name the file itself (a secret file must be a plain file)",
                path.display()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(ConfigError::key(
            key,
            format!(
                "{} is readable or writable by other users (mode {mode:04o}); \
                 `chmod 0640` it (or 0600)",
                path.display()
            ),
        ));
    }
    Ok(())
}
