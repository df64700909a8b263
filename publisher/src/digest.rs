//! SHA-256 digests as OCI writes them (`sha256:<64 hex>`) in the text form the descriptors
//! carry, and a reader that hashes what passes through it (OCI image spec, "Digests"). The
//! typed digests, their validation and ChainIDs are the `namespace` crate's.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    namespace::Digest::of_bytes(bytes).to_string()
}

/// A reader that computes the SHA-256 and length of everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads `inner` to its end, then returns it with the digest (`sha256:<hex>`) and byte
    /// count of everything read.
    pub fn finish(mut self) -> io::Result<(R, String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        Ok((self.inner, digest, self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_as_text() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hashing_reader_drains_and_counts() {
        let mut r = HashingReader::new(&b"hello world"[..]);
        let mut first = [0u8; 5];
        r.read_exact(&mut first).unwrap_or_else(|e| panic!("{e}"));
        let (_, digest, count) = r.finish().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count, 11);
        assert_eq!(digest, sha256_digest(b"hello world"));
    }
}
