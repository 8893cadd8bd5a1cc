//! Per-broker cursors: how far each broker has confirmed (PUBACK) the outbox, on disk.
//!
//! One small file per broker under `outbox/cursors/`, replaced atomically (temporary file,
//! fsync, rename, fsync of the directory), so a crash leaves the old position or the new one.
//! A cursor that is lost or unreadable only ever moves back, which means redelivery (subscribers
//! drop duplicates by `event_id`), never loss; so a damaged cursor file is logged and replaced
//! by the oldest position still held rather than refusing to start.

use std::fs;
use std::path::Path;

use super::{files, OutboxError};

const MAGIC: &[u8; 4] = b"EWC1";
const LEN: usize = 4 + 8 + 4;

/// The file name for a broker: its URL with everything but `[A-Za-z0-9.-]` replaced by `_`,
/// so `mqtt://10.0.0.5:1883` becomes `mqtt___10.0.0.5_1883.cursor`.
pub(crate) fn file_name(broker: &str) -> String {
    let safe: String = broker
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.cursor")
}

/// Reads a cursor file: `Ok(None)` when it does not exist, `Err(reason)` when it is damaged.
pub(crate) fn read(path: &Path) -> Result<Option<u64>, String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if bytes.len() != LEN || &bytes[..4] != MAGIC {
        return Err(format!("{} bytes, not a cursor", bytes.len()));
    }
    let mut pos = [0u8; 8];
    pos.copy_from_slice(&bytes[4..12]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[12..16]);
    if crc32fast::hash(&bytes[..12]) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    Ok(Some(u64::from_le_bytes(pos)))
}

/// Durably replaces the cursor file at `path` with `pos` (the next position to deliver).
pub(crate) fn write(dir: &Path, path: &Path, pos: u64) -> Result<(), OutboxError> {
    let mut buf = Vec::with_capacity(LEN);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&pos.to_le_bytes());
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    files::replace(dir, path, &path.with_extension("cursor.tmp"), &buf)
}
