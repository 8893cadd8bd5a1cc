//! The SunSpec map's structure: the `SunS` marker, then models one after the other, each an id
//! and a length, until the id 0xFFFF.
//!
//! Pure (no socket): the walk is a step machine the network client feeds one header at a time,
//! so the fuzz target and the tests drive it with made-up maps, and every map a device can
//! serve (a length that runs past register 65535, a chain without its end marker) ends in an
//! error that says where, never in a panic or an endless walk.

/// "SunS" as two registers.
pub const MARKER: [u16; 2] = [0x5375, 0x6E53];

/// Where the marker may be, in the order they are tried (SunSpec Modbus specification: 40000
/// first, then 50000, then 0).
pub const BASES: [u16; 3] = [40000, 50000, 0];

/// The model id that ends the chain.
pub const END: u16 = 0xFFFF;

/// More models than this without the end marker is a broken map, not a device: no real one has
/// a tenth as many.
pub const MAX_MODELS: usize = 256;

/// One model of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub id: u16,
    /// The register of its id; its points start two registers later.
    pub start: u16,
    /// Its `L`: registers after the id and length.
    pub len: u16,
}

impl Model {
    /// The registers it occupies, header included.
    pub fn span(&self) -> u32 {
        u32::from(self.len) + 2
    }
}

/// Why the chain could not be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("model {id} at register {start} has length {len}: it runs past register 65535, the end of the Modbus map (a broken chain)")]
    PastMap { id: u16, start: u16, len: u16 },
    #[error("the model chain has no end marker (0xFFFF) before register 65535 (a broken chain)")]
    NoEnd,
    #[error("more than {MAX_MODELS} models without the end marker 0xFFFF: a chain that loops or a broken map")]
    TooMany,
}

/// The walk along the chain: ask [`Walk::next_header`] where to read, read two registers there,
/// give them to [`Walk::header`]; until `next_header` says `None`.
#[derive(Debug, Clone)]
pub struct Walk {
    next: u32,
    done: bool,
    models: Vec<Model>,
}

impl Walk {
    /// After a marker found at `base`.
    pub fn after_marker(base: u16) -> Walk {
        Walk {
            next: u32::from(base) + 2,
            done: false,
            models: Vec::new(),
        }
    }

    /// The register of the next model header to read, or `None` once the end marker was read.
    pub fn next_header(&self) -> Result<Option<u16>, ChainError> {
        if self.done {
            return Ok(None);
        }
        // The header itself must fit the map.
        match u16::try_from(self.next) {
            Ok(at) if at < u16::MAX => Ok(Some(at)),
            _ => Err(ChainError::NoEnd),
        }
    }

    /// The two registers read at [`Walk::next_header`]: the model id and its length.
    pub fn header(&mut self, id: u16, len: u16) -> Result<(), ChainError> {
        let start = match self.next_header()? {
            Some(at) => at,
            None => return Ok(()),
        };
        if id == END {
            self.done = true;
            return Ok(());
        }
        if self.models.len() >= MAX_MODELS {
            return Err(ChainError::TooMany);
        }
        let model = Model { id, start, len };
        let end = u32::from(start) + model.span();
        if end > 0x1_0000 {
            return Err(ChainError::PastMap { id, start, len });
        }
        self.next = end;
        self.models.push(model);
        Ok(())
    }

    /// The register of the end marker, once read.
    pub fn end(&self) -> Option<u16> {
        if self.done {
            u16::try_from(self.next).ok()
        } else {
            None
        }
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }
}

/// Whether two registers are the `SunS` marker.
pub fn is_marker(words: &[u16]) -> bool {
    words.get(..2) == Some(&MARKER[..])
}

/// A SunSpec string: two ASCII characters a register, NUL-padded; "not implemented" is all
/// zero (an empty string). Anything but printable ASCII is shown as `?`.
pub fn string(words: &[u16]) -> String {
    let bytes = words.iter().flat_map(|w| w.to_be_bytes());
    let s: String = bytes
        .take_while(|b| *b != 0)
        .map(|b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    s.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks `map` (registers from `base`) as the client would; reads outside it fail.
    fn walk(base: u16, map: &[u16]) -> Result<Vec<Model>, String> {
        let mut w = Walk::after_marker(base);
        while let Some(at) = w.next_header().map_err(|e| e.to_string())? {
            let off = usize::from(at - base);
            let h = map.get(off..off + 2).ok_or("read outside the map")?;
            w.header(h[0], h[1]).map_err(|e| e.to_string())?;
        }
        Ok(w.models().to_vec())
    }

    #[test]
    fn walks_models_until_the_end_marker() {
        let mut map = vec![0x5375, 0x6E53, 1, 2, 0, 0, 802, 0, 804, 1, 9, 0xFFFF, 0];
        map.truncate(13);
        let got = walk(40000, &map).expect("walks");
        assert_eq!(
            got,
            vec![
                Model {
                    id: 1,
                    start: 40002,
                    len: 2
                },
                Model {
                    id: 802,
                    start: 40006,
                    len: 0
                },
                Model {
                    id: 804,
                    start: 40008,
                    len: 1
                },
            ]
        );
    }

    #[test]
    fn broken_chains_are_errors_that_say_where() {
        // A length that runs past the map.
        let err = walk(65530, &[0x5375, 0x6E53, 804, 100]).unwrap_err();
        assert_eq!(
            err,
            "model 804 at register 65532 has length 100: it runs past register 65535, the end of the Modbus map (a broken chain)"
        );
        // Models up to the last register and no end marker.
        let err = walk(65530, &[0x5375, 0x6E53, 1, 2, 0, 0]).unwrap_err();
        assert!(err.contains("no end marker"), "{err}");
        // Zero-length models forever: bounded.
        let mut map = vec![0x5375, 0x6E53];
        map.extend(std::iter::repeat_n([7u16, 0], 300).flatten());
        let err = walk(0, &map).unwrap_err();
        assert!(err.contains("more than 256 models"), "{err}");
    }

    #[test]
    fn strings_stop_at_nul_and_never_panic() {
        assert_eq!(string(&[0x656D, 0x6265, 0x7200, 0x4141]), "ember");
        assert_eq!(string(&[0, 0]), "");
        assert_eq!(string(&[0x01FF]), "??");
    }
}
