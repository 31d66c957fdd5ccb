//! The MQTT data representations (§1.5 of both specifications): integers, variable byte integers, UTF-8
//! strings and binary data, read from a [`Reader`] and written to a [`Sink`].
//!
//! Writing goes through a trait so that one function both measures a packet (with a [`Counter`]) and writes
//! it (to a `BytesMut`): the remaining length must be known before the first byte of the body is written, and
//! measuring with the writer itself keeps the two from ever disagreeing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};

/// The largest value a four-byte variable byte integer holds.
pub(super) const MAX_VARINT: usize = 268_435_455;

/// A cursor over the body of one complete packet. Running out of bytes here means the packet is malformed,
/// not that more bytes are needed: the framing already waited for the whole packet.
#[derive(Debug)]
pub(super) struct Reader {
    buf: Bytes,
}

/// The error for a field that runs past the end of its packet or property block.
const TRUNCATED: DecodeError = DecodeError::MalformedPacket("field runs past the end of the packet");

impl Reader {
    pub(super) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless every byte was read: trailing bytes are not allowed anywhere in MQTT.
    pub(super) fn expect_end(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::MalformedPacket(what)) }
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u8())
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u16())
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer inside a packet (property length, subscription identifier).
    pub(super) fn varint(&mut self) -> Result<usize, DecodeError> {
        match parse_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(TRUNCATED),
        }
    }

    /// The next `n` bytes, sharing the packet's allocation.
    pub(super) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(n))
    }

    /// Everything not yet read (a PUBLISH payload).
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary data: a two-byte length, then that many bytes.
    pub(super) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string: well-formed (so no surrogates) and free of U+0000.
    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if text.contains('\0') {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(text.to_owned())
    }
}

/// Parses a variable byte integer from the front of `bytes`: `Ok(None)` if it is incomplete, otherwise its
/// value and encoded length. More than four bytes is malformed. Non-minimal encodings (`0x80 0x00`) are
/// accepted: they are unambiguous, and rejecting them would buy nothing.
pub(super) fn parse_varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::MalformedPacket("variable byte integer longer than four bytes"))
    } else {
        Ok(None)
    }
}

/// Somewhere to write encoded bytes, or just to count them.
pub(super) trait Sink {
    fn put_u8(&mut self, value: u8);
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    fn put_slice(&mut self, bytes: &[u8]);
}

/// A sink that only measures.
#[derive(Debug, Default)]
pub(super) struct Counter(pub(super) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, value: u8) {
        BufMut::put_u8(self, value);
    }
    fn put_u16(&mut self, value: u16) {
        BufMut::put_u16(self, value);
    }
    fn put_u32(&mut self, value: u32) {
        BufMut::put_u32(self, value);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        BufMut::put_slice(self, bytes);
    }
}

/// How many bytes the variable byte integer encoding of `value` takes.
pub(super) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(super) fn put_varint<S: Sink>(sink: &mut S, value: usize) -> Result<(), EncodeError> {
    if value > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge(value));
    }
    let mut rest = value;
    loop {
        // Truncation is the point: the low seven bits go out in this byte.
        let digit = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest == 0 {
            sink.put_u8(digit);
            return Ok(());
        }
        sink.put_u8(digit | 0x80);
    }
}

pub(super) fn put_binary<S: Sink>(sink: &mut S, bytes: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::BinaryTooLong(bytes.len()))?;
    sink.put_u16(len);
    sink.put_slice(bytes);
    Ok(())
}

pub(super) fn put_string<S: Sink>(sink: &mut S, text: &str) -> Result<(), EncodeError> {
    let len = u16::try_from(text.len()).map_err(|_| EncodeError::StringTooLong(text.len()))?;
    sink.put_u16(len);
    sink.put_slice(text.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_varint(value: usize) -> Vec<u8> {
        let mut buf = BytesMut::new();
        put_varint(&mut buf, value).unwrap();
        buf.to_vec()
    }

    #[test]
    fn varint_boundaries_round_trip_with_the_spec_lengths() {
        // The table in §1.5.5 (v5) / §2.2.3 (3.1.1).
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            assert_eq!(encode_varint(value), bytes, "encoding {value}");
            assert_eq!(varint_len(value), bytes.len(), "length of {value}");
            assert_eq!(parse_varint(bytes).unwrap(), Some((value, bytes.len())), "decoding {value}");
            for cut in 0..bytes.len() {
                assert_eq!(parse_varint(&bytes[..cut]).unwrap(), None, "prefix of {value}");
            }
        }
    }

    #[test]
    fn five_byte_varint_is_malformed() {
        let err = parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).unwrap_err();
        assert!(matches!(err, DecodeError::MalformedPacket(_)));
        // Already known after four continuation bytes.
        assert!(parse_varint(&[0x80, 0x80, 0x80, 0x80]).is_err());
    }

    #[test]
    fn varint_too_large_to_encode() {
        let mut buf = BytesMut::new();
        assert_eq!(put_varint(&mut buf, 268_435_456), Err(EncodeError::PacketTooLarge(268_435_456)));
    }

    #[test]
    fn counter_agrees_with_writer() {
        let mut counter = Counter::default();
        let mut buf = BytesMut::new();
        for sink in [&mut counter as &mut dyn Sink, &mut buf as &mut dyn Sink] {
            sink.put_u8(1);
            sink.put_u16(2);
            sink.put_u32(3);
            sink.put_slice(b"abc");
        }
        assert_eq!(counter.0, buf.len());
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x03a\x00b"));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(b"\x00\x02\xC3\x28"));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        // An encoded surrogate, U+D800, is not UTF-8.
        let mut r = Reader::new(Bytes::from_static(b"\x00\x03\xED\xA0\x80"));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(b"\x00\x04\xF0\x9F\x98\x80"));
        assert_eq!(r.string().unwrap(), "\u{1F600}");
        assert!(r.is_empty());
    }

    #[test]
    fn truncated_fields_are_malformed() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x05abc"));
        assert!(matches!(r.string(), Err(DecodeError::MalformedPacket(_))));
        let mut r = Reader::new(Bytes::from_static(b"\x01"));
        assert!(matches!(r.u16(), Err(DecodeError::MalformedPacket(_))));
        let mut r = Reader::new(Bytes::from_static(b"\x80"));
        assert!(matches!(r.varint(), Err(DecodeError::MalformedPacket(_))));
    }

    #[test]
    fn oversized_strings_and_binaries_cannot_be_written() {
        let mut buf = BytesMut::new();
        let long = "a".repeat(65_536);
        assert_eq!(put_string(&mut buf, &long), Err(EncodeError::StringTooLong(65_536)));
        assert_eq!(put_binary(&mut buf, long.as_bytes()), Err(EncodeError::BinaryTooLong(65_536)));
        assert!(put_string(&mut buf, &long[1..]).is_ok());
    }
}
