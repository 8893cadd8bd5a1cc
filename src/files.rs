//! Reading a file an operator names (the configuration, an included profile file, the broker
//! password, TLS certificates and keys, the console's users) with a ceiling on its size.
//!
//! `std::fs::read` reads until the end, and some paths have none: `password_file = "/dev/zero"`
//! or `--config /dev/urandom` (a slip of the hand, or a symlink someone replaced) would grow the
//! process until the kernel kills it, on a gateway that must keep watching. Each of these files
//! is small by nature, so reading stops one byte past its ceiling and the caller reports "larger
//! than", naming the key and the file, as for any unreadable file.

use std::io::{self, Read};
use std::path::Path;

/// A configuration file: 5,000 devices with their own points take a few MiB.
pub const MAX_CONFIG: u64 = 64 << 20;
/// Anything else an operator names: an included profile file, a password, a PEM certificate
/// or key (a system CA bundle is about 200 KiB), the console's users file.
pub const MAX_SMALL: u64 = 4 << 20;

/// The whole of `path`, or an error (`InvalidData`, "larger than N MiB (…)") once it passes `max`
/// bytes, checked while reading (a device file or a growing file has no trustworthy size).
pub fn read_at_most(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    read_capped(std::fs::File::open(path)?, max)?.ok_or_else(|| too_large(max))
}

/// Everything `reader` holds, or `None` once it passes `max` bytes (reading stops one byte
/// past it): the one bounded read, for callers that word "too large" their own way.
pub(crate) fn read_capped(reader: impl Read, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    reader.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// As [`read_at_most`], as UTF-8 text (`InvalidData` naming the byte offset when it is not).
pub fn read_text_at_most(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_at_most(path, max)?).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

fn too_large(max: u64) -> io::Error {
    let size = if max >= 1 << 20 && max % (1 << 20) == 0 {
        format!("{} MiB", max >> 20)
    } else {
        format!("{max} bytes")
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than {size}, the most this file may hold (is it the right file?)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_device_file_is_refused_at_the_ceiling_not_read_forever() {
        let e = read_at_most(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            e.to_string(),
            "larger than 1 MiB, the most this file may hold (is it the right file?)"
        );
    }

    #[test]
    fn a_file_at_the_ceiling_is_read_whole_and_one_byte_more_is_refused() {
        let dir = std::env::temp_dir().join(format!("ew-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"abcde").unwrap();
        assert_eq!(read_at_most(&p, 5).unwrap(), b"abcde");
        let e = read_at_most(&p, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "larger than 4 bytes, the most this file may hold (is it the right file?)"
        );
        std::fs::write(&p, [b'a', 0xff, b'b']).unwrap();
        let e = read_text_at_most(&p, 5).unwrap_err();
        assert_eq!(e.to_string(), "not UTF-8 text (invalid byte at offset 1)");
        let e = read_at_most(&dir.join("missing"), 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
