//! A small, bounds-checked binary encoding for stored entries: a damaged
//! entry is an error ([`StateError::Corrupt`]), never a panic.

use crate::StateError;

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// An unsigned integer.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A signed integer.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let n = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&n.to_be_bytes());
        self.0.extend_from_slice(&v[..n as usize]);
        self
    }

    /// A length-prefixed string.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
}

/// Reads fields back in the order they were written.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, an entry of kind `what` (named in errors).
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.buf.len() < n {
            return Err(StateError::Corrupt(format!("{} is truncated", self.what)));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// An unsigned integer.
    pub fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A signed integer.
    pub fn i64(&mut self) -> Result<i64, StateError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], StateError> {
        let n = u32::from_be_bytes(self.array()?) as usize;
        self.take(n)
    }

    /// A length-prefixed string.
    pub fn str(&mut self) -> Result<&'a str, StateError> {
        let what = self.what;
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| StateError::Corrupt(format!("{what} holds a string that is not UTF-8")))
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_truncation() {
        let mut w = Writer::default();
        w.u64(7).i64(-3).u8(1).str("名字").bytes(b"\0\x01");
        let mut r = Reader::new(&w.0, "entry");
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.i64().unwrap(), -3);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.str().unwrap(), "名字");
        assert_eq!(r.bytes().unwrap(), b"\0\x01");
        assert!(r.is_empty());
        for cut in 0..w.0.len() {
            let mut r = Reader::new(&w.0[..cut], "entry");
            let ok = r.u64().is_ok()
                && r.i64().is_ok()
                && r.u8().is_ok()
                && r.str().is_ok()
                && r.bytes().is_ok();
            assert!(!ok, "a cut at {cut} was read as whole");
        }
    }
}
