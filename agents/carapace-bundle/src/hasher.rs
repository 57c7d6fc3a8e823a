//! [`PartHasher`]: counts and hashes a part as it streams by, and checks
//! it against the manifest at the end.
//!
//! A chunk that would take the part past its size is refused at once (and
//! not hashed), so a server cannot make the receiver write more than the
//! manifest allows; [`PartHasher::finish`] then tells a truncated download
//! ("truncated: got X of Y bytes") from corrupted content (a SHA-256
//! mismatch). Messages do not name the file: the caller prefixes it.

use crate::manifest::{check_hex, check_size};
use crate::{from_hex, to_hex, BundleError, Part};
use sha2::{Digest, Sha256};

/// The running size and SHA-256 of one part.
#[derive(Clone)]
pub struct PartHasher {
    expected_bytes: u64,
    expected_sha256: [u8; 32],
    seen: u64,
    sha: Sha256,
}

impl PartHasher {
    /// A hasher for `part`; refuses a part whose size or digest is not
    /// valid (a manifest that parsed never has one).
    pub fn new(part: &Part) -> Result<PartHasher, BundleError> {
        check_size("bytes", part.bytes)?;
        check_hex("sha256", &part.sha256)?;
        let expected_sha256 = from_hex::<32>(&part.sha256).ok_or_else(|| BundleError::Hex {
            field: "sha256",
            value: part.sha256.clone(),
            digits: 64,
        })?;
        Ok(PartHasher {
            expected_bytes: part.bytes,
            expected_sha256,
            seen: 0,
            sha: Sha256::new(),
        })
    }

    /// Takes the next chunk. Refuses one that would make the part longer
    /// than the manifest says (the chunk is then not counted).
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), BundleError> {
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        match self.seen.checked_add(len) {
            Some(total) if total <= self.expected_bytes => {
                self.sha.update(chunk);
                self.seen = total;
                Ok(())
            }
            _ => Err(BundleError::Oversized {
                expected: self.expected_bytes,
            }),
        }
    }

    /// The bytes taken so far.
    pub fn bytes(&self) -> u64 {
        self.seen
    }

    /// The size the manifest gives.
    pub fn expected_bytes(&self) -> u64 {
        self.expected_bytes
    }

    /// Checks the size, then the digest.
    pub fn finish(self) -> Result<(), BundleError> {
        if self.seen < self.expected_bytes {
            return Err(BundleError::Truncated {
                got: self.seen,
                expected: self.expected_bytes,
            });
        }
        let actual = self.sha.finalize();
        if actual.as_slice() != self.expected_sha256.as_slice() {
            return Err(BundleError::Digest {
                actual: to_hex(actual.as_slice()),
                expected: to_hex(&self.expected_sha256),
            });
        }
        Ok(())
    }
}

/// For `std::io::copy`: a refused chunk is an `InvalidData` error that
/// carries the [`BundleError`].
impl std::io::Write for PartHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for PartHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PartHasher({} of {} bytes, expecting sha256 {})",
            self.seen,
            self.expected_bytes,
            to_hex(&self.expected_sha256)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part_for(data: &[u8]) -> Part {
        Part {
            file: "root.verity".into(),
            bytes: data.len() as u64,
            sha256: to_hex(Sha256::digest(data).as_slice()),
        }
    }

    fn feed(part: &Part, chunks: &[&[u8]]) -> Result<(), BundleError> {
        let mut h = PartHasher::new(part)?;
        for c in chunks {
            h.update(c)?;
        }
        h.finish()
    }

    #[test]
    fn the_right_bytes_in_any_chunks_pass() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let part = part_for(&data);
        assert_eq!(feed(&part, &[&data]), Ok(()));
        let (a, b) = data.split_at(4097);
        assert_eq!(feed(&part, &[a, &[], b]), Ok(()));
        let mut h = PartHasher::new(&part).expect("valid");
        std::io::copy(&mut &data[..], &mut h).expect("copies");
        assert_eq!(h.bytes(), 10_000);
        assert_eq!(h.expected_bytes(), 10_000);
        assert_eq!(h.finish(), Ok(()));
    }

    #[test]
    fn a_truncated_part_says_how_much_arrived() {
        let data = vec![7u8; 5000];
        let part = part_for(&data);
        let err = feed(&part, &[&data[..4096]]).expect_err("truncated");
        assert_eq!(err.to_string(), "truncated: got 4096 of 5000 bytes");
        let err = feed(&part, &[]).expect_err("nothing");
        assert_eq!(err.to_string(), "truncated: got 0 of 5000 bytes");
    }

    #[test]
    fn an_oversized_part_is_refused_at_the_chunk_that_overflows() {
        let data = vec![7u8; 5000];
        let part = part_for(&data);
        let mut h = PartHasher::new(&part).expect("valid");
        h.update(&data[..4000]).expect("fits");
        let err = h.update(&data[..1001]).expect_err("too long");
        assert_eq!(
            err.to_string(),
            "too long: more than the 5000 bytes the manifest says"
        );
        // The refused chunk was not counted; the rest still fits.
        assert_eq!(h.bytes(), 4000);
        h.update(&data[..1000]).expect("fits");
        assert_eq!(h.finish(), Ok(()));
        // Through io::Write, the error is InvalidData.
        let mut h = PartHasher::new(&part).expect("valid");
        let err = std::io::copy(&mut &[0u8; 6000][..], &mut h).expect_err("too long");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn changed_content_is_a_digest_mismatch() {
        let data = vec![7u8; 5000];
        let part = part_for(&data);
        let mut other = data.clone();
        other[4321] ^= 1;
        let err = feed(&part, &[&other]).expect_err("mismatch");
        let text = err.to_string();
        assert!(
            text.starts_with("SHA-256 mismatch: the data hashes to "),
            "{text}"
        );
        assert!(text.ends_with(&format!("the manifest says {}", part.sha256)));
    }

    #[test]
    fn an_invalid_part_makes_no_hasher() {
        let mut part = part_for(b"x");
        part.sha256 = "zz".into();
        assert!(matches!(
            PartHasher::new(&part),
            Err(BundleError::Hex { .. })
        ));
        let mut part = part_for(b"x");
        part.bytes = 0;
        assert!(matches!(
            PartHasher::new(&part),
            Err(BundleError::Empty { .. })
        ));
    }
}
