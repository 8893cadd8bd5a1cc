//! The outbox's file operations, each mapped to the [`OutboxError`] that names the file.
//!
//! Kept apart so that recovery, appends and compaction read as what they decide rather than how
//! a file is opened, and so that the one durable way to replace a file (temporary file, fsync,
//! rename, fsync of the directory) is written once for segments and cursors alike. Which
//! failures are [`OutboxError::Durability`] (fatal) and which are [`OutboxError::Io`] is
//! decided here, per operation, as before the split.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::OutboxError;

/// Creates `dir` and its parents if they are missing.
pub(super) fn create_dir(dir: &Path) -> Result<(), OutboxError> {
    fs::create_dir_all(dir).map_err(|source| OutboxError::Io {
        path: dir.to_path_buf(),
        op: "create directory",
        source,
    })
}

/// The names of the files in `dir` (names that are not UTF-8 are not the outbox's).
pub(super) fn list(dir: &Path) -> Result<Vec<String>, OutboxError> {
    let fail = |source| OutboxError::Io {
        path: dir.to_path_buf(),
        op: "list",
        source,
    };
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(fail)? {
        let e = e.map_err(fail)?;
        if let Some(name) = e.file_name().to_str() {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// The whole file.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, OutboxError> {
    fs::read(path).map_err(|source| OutboxError::Io {
        path: path.to_path_buf(),
        op: "read",
        source,
    })
}

/// `len` bytes of `path` from `offset`: one record's frame, for a replay.
pub(super) fn read_at(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, OutboxError> {
    use std::os::unix::fs::FileExt;
    let fail = |source| OutboxError::Io {
        path: path.to_path_buf(),
        op: "read",
        source,
    };
    let f = File::open(path).map_err(fail)?;
    let mut buf = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
    f.read_exact_at(&mut buf, offset).map_err(fail)?;
    Ok(buf)
}

/// Cuts `path` to `len` bytes and fsyncs it: a torn tail must not be appended after.
pub(super) fn truncate(path: &Path, len: u64) -> Result<(), OutboxError> {
    let fail = |source| OutboxError::Durability {
        path: path.to_path_buf(),
        offset: len,
        op: "truncate",
        source,
    };
    let f = OpenOptions::new().write(true).open(path).map_err(fail)?;
    f.set_len(len).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    tracing::warn!(
        "outbox: {} truncated to {len} bytes, after its last valid record",
        path.display()
    );
    Ok(())
}

/// Removes `path`; one already gone is not an error.
pub(super) fn remove(path: &Path) -> Result<(), OutboxError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OutboxError::Io {
            path: path.to_path_buf(),
            op: "remove",
            source,
        }),
    }
}

/// Creates `path` (empty if new) in `dir`, durably: the new name survives a crash.
pub(super) fn create(dir: &Path, path: &Path) -> Result<(), OutboxError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| OutboxError::Durability {
            path: path.to_path_buf(),
            offset: 0,
            op: "create",
            source,
        })?;
    sync_dir(dir)
}

/// Replaces `path` in `dir` with `buf` so that a crash leaves the old file or the new one:
/// written to `tmp` and fsynced, renamed over `path`, then the directory fsynced.
pub(super) fn replace(dir: &Path, path: &Path, tmp: &Path, buf: &[u8]) -> Result<(), OutboxError> {
    let fail = |op, source| OutboxError::Durability {
        path: tmp.to_path_buf(),
        offset: 0,
        op,
        source,
    };
    let mut f = File::create(tmp).map_err(|e| fail("create", e))?;
    f.write_all(buf).map_err(|e| fail("write", e))?;
    f.sync_data().map_err(|e| fail("fsync", e))?;
    drop(f);
    fs::rename(tmp, path).map_err(|e| fail("rename", e))?;
    sync_dir(dir)
}

/// fsyncs a directory so that file creations, renames and removals in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| OutboxError::Durability {
            path: dir.to_path_buf(),
            offset: 0,
            op: "fsync directory",
            source,
        })
}
