//! The console's users: `users_file`, one `name:argon2-hash` a line, and the check of a
//! password against it.
//!
//! Passwords are never stored, only their argon2id hashes (PHC strings, salt included), so a
//! copy of the file does not give away a login. `emberwatch console-user` adds or replaces a
//! user; the console rereads the file when it changes, so adding a user needs no restart.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};

/// The longest user name, in characters (the same bound as a command's `"by"`).
pub const MAX_NAME: usize = crate::command::MAX_BY;

/// What went wrong with a users file or a new user, naming the file or the rule broken.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("user name {0:?}: {1}")]
    Name(String, &'static str),
    #[error("password: {0}")]
    Password(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> UsersError {
    UsersError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Whether `name` can be a user: what `"by"` takes, and no `:` (the file's separator).
pub fn check_name(name: &str) -> Result<(), UsersError> {
    let bad = |why| Err(UsersError::Name(name.to_string(), why));
    if name.trim().is_empty() {
        bad("must not be blank")
    } else if name.chars().count() > MAX_NAME {
        bad("is over 64 characters")
    } else if name.chars().any(char::is_control) {
        bad("must not contain control characters")
    } else if name.contains(':') {
        bad("must not contain ':' (it separates name and hash in the users file)")
    } else if name != name.trim() {
        bad("must not start or end with a space")
    } else {
        Ok(())
    }
}

/// The users in a file: (name, PHC hash) in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users(Vec<(String, String)>);

impl Users {
    /// Reads `path`; a missing file is no users (the console logs that no one can command).
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = match crate::files::read_text_at_most(path, crate::files::MAX_SMALL) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Users::default()),
            Err(e) => return Err(file_error(path, format!("cannot read: {e}"))),
        };
        Users::parse(&text).map_err(|(line, why)| file_error(path, format!("line {line}: {why}")))
    }

    fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut users = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err((i + 1, "expected name:hash".into()));
            };
            if PasswordHash::new(hash).is_err() {
                return Err((
                    i + 1,
                    format!("{name:?}: not an argon2 hash (make it with emberwatch console-user)"),
                ));
            }
            users.push((name.to_string(), hash.to_string()));
        }
        Ok(Users(users))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `password` is `name`'s. Unknown names cost a hash too, so a guesser cannot
    /// tell which names exist by the time an answer takes.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let hash = self
            .0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h.as_str());
        let Some(hash) = hash else {
            let _ = hash_password(password);
            return false;
        };
        PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    }

    fn render(&self) -> String {
        self.0.iter().map(|(n, h)| format!("{n}:{h}\n")).collect()
    }
}

fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Password(e.to_string()))
}

/// Adds `name` with `password`, or replaces their password; the file is rewritten atomically
/// with mode 0600 (it holds hashes: no one else needs to read it), keeping the owner of the file
/// it replaces, so a file an operator gave to the console's service user (`chown emberwatch`)
/// stays readable by the console after root adds a user.
pub fn set(path: &Path, name: &str, password: &str) -> Result<(), UsersError> {
    check_name(name)?;
    if password.is_empty() {
        return Err(UsersError::Password(
            "empty: nothing was read from stdin".into(),
        ));
    }
    let mut users = Users::load(path)?;
    let hash = hash_password(password)?;
    match users.0.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = hash,
        None => users.0.push((name.to_string(), hash)),
    }
    write_private(path, users.render().as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), UsersError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_error(&tmp, format!("cannot write: {e}")))?;
    // `mode` applies only when the file is created; a stale temporary keeps its own.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| file_error(&tmp, format!("cannot write: {e}")))?;
    if let Ok(old) = std::fs::metadata(path) {
        let owner = (old.uid(), old.gid());
        let mine = f.metadata().map(|m| (m.uid(), m.gid())).ok();
        if mine != Some(owner) {
            // Only root may give a file away; anyone else writes their own file, as before.
            std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1)).map_err(|e| {
                file_error(
                    &tmp,
                    format!(
                        "cannot give it the owner of {} (uid {}, gid {}): {e}",
                        path.display(),
                        owner.0,
                        owner.1
                    ),
                )
            })?;
        }
    }
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| file_error(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, format!("cannot replace: {e}")))
}

/// `emberwatch console-user --users FILE NAME`: the password is one line on stdin.
pub fn add_from_stdin(path: &Path, name: &str) -> Result<(), UsersError> {
    check_name(name)?;
    let stdin = std::io::stdin();
    if std::io::IsTerminal::is_terminal(&stdin) {
        eprint!("password for {name} (shown as typed; pipe it in to hide it): ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| UsersError::Password(format!("cannot read stdin: {e}")))?;
    let password = line.trim_end_matches(['\n', '\r']);
    let existed = Users::load(path)?.0.iter().any(|(n, _)| n == name);
    set(path, name, password)?;
    eprintln!(
        "{} {name} in {}",
        if existed {
            "replaced the password of"
        } else {
            "added"
        },
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_added_replaced_and_verified_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.users");
        set(&path, "kim", "s3cret").unwrap();
        set(&path, "lee", "other").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let u = Users::load(&path).unwrap();
        assert_eq!(u.len(), 2);
        assert!(u.verify("kim", "s3cret"));
        assert!(!u.verify("kim", "other"));
        assert!(!u.verify("nobody", "s3cret"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret"), "only hashes are stored");
        assert!(text.lines().all(|l| l.contains(":$argon2id$")), "{text}");

        set(&path, "kim", "new").unwrap();
        let u = Users::load(&path).unwrap();
        assert_eq!(u.len(), 2, "replaced, not added");
        assert!(u.verify("kim", "new") && !u.verify("kim", "s3cret"));
    }

    #[test]
    fn a_rewrite_keeps_the_owner_the_operator_gave_the_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.users");
        set(&path, "kim", "s3cret").unwrap();
        // Giving a file away needs root; as anyone else the owner cannot differ to begin with.
        if std::os::unix::fs::chown(&path, Some(65534), Some(65534)).is_err() {
            eprintln!("SKIPPED: not root, cannot chown the users file to test keeping its owner");
            return;
        }
        set(&path, "lee", "other").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (65534, 65534),
            "the owner survives a rewrite"
        );
        assert_eq!(Users::load(&path).unwrap().len(), 2);
    }

    #[test]
    fn bad_names_passwords_and_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u");
        for (name, want) in [
            ("", "must not be blank"),
            ("a:b", "must not contain ':'"),
            ("a\tb", "control characters"),
            (" kim", "must not start or end with a space"),
        ] {
            let e = set(&path, name, "pw").unwrap_err().to_string();
            assert!(e.contains(want), "{name:?}: {e}");
        }
        assert!(set(&path, &"x".repeat(65), "pw").is_err());
        assert_eq!(
            set(&path, "kim", "").unwrap_err().to_string(),
            "password: empty: nothing was read from stdin"
        );
        std::fs::write(&path, "kim:plaintext\n").unwrap();
        let e = Users::load(&path).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "line 1: \"kim\": not an argon2 hash (make it with emberwatch console-user)"
            ),
            "{e}"
        );
        assert!(Users::load(&dir.path().join("missing")).unwrap().is_empty());
    }
}
