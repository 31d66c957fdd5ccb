//! Names that go into certificates, checked before anything is signed, and serial numbers.
//!
//! Validation happens when a name is built, so a request can only carry names that are valid: an operator typing
//! a device name in the console gets the error before a key is generated. Duplicate detection against existing
//! certificates belongs to the store, which compares [`CommonName::canonical`] forms.

use std::fmt;
use std::net::IpAddr;

use rcgen::SanType;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::PkiError;

/// The subject common name of a certificate: the device or user it is issued to.
///
/// Limited to 64 characters (the X.520 upper bound), without control characters and without leading or
/// trailing white space, because it becomes an MQTT user name (`use_identity_as_username`) and a console label,
/// where invisible differences would let two devices look alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommonName(String);

impl CommonName {
    /// Upper bound on the length in characters, from X.520 (`ub-common-name`).
    pub const MAX_CHARS: usize = 64;

    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let invalid = |reason| PkiError::InvalidName { kind: "common name", value: name.to_owned(), reason };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.trim() != name {
            return Err(invalid("it starts or ends with white space"));
        }
        if name.chars().count() > Self::MAX_CHARS {
            return Err(invalid("it is longer than 64 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid("it contains a control character"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as it appears in the certificate.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form in which two names count as the same: case folded and with runs of inner white space collapsed,
    /// so that `Press-1` and `press-1` cannot both be issued. The store keeps this in a unique column.
    pub fn canonical(&self) -> String {
        self.0.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
    }
}

impl fmt::Display for CommonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subject alternative name. Clients match a server by these (not by the common name), and a listener can take
/// a client's identity from one of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SubjectAltName {
    /// A host name, without wildcard or trailing dot.
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// An email address (`rfc822Name`).
    Email(String),
    /// A URI, such as a SPIFFE id.
    Uri(String),
}

impl SubjectAltName {
    /// A DNS name: letters, digits and hyphens in dot-separated labels of at most 63 characters, 253 in all.
    pub fn dns(name: &str) -> Result<Self, PkiError> {
        check_dns(name, "DNS name", name)?;
        Ok(Self::Dns(name.to_owned()))
    }

    /// An email address: a non-empty local part without spaces, `@`, and a valid DNS domain.
    pub fn email(address: &str) -> Result<Self, PkiError> {
        let invalid =
            |reason| PkiError::InvalidName { kind: "email address", value: address.to_owned(), reason };
        let Some((local, domain)) = address.split_once('@') else {
            return Err(invalid("it has no @"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(invalid("the part before @ must be 1 to 64 characters"));
        }
        if !local.bytes().all(|b| b.is_ascii_graphic() && b != b'@') {
            return Err(invalid("the part before @ must be printable ASCII without spaces or another @"));
        }
        check_dns(domain, "email address", address)?;
        Ok(Self::Email(address.to_owned()))
    }

    /// A URI: a scheme (a letter, then letters, digits, `+`, `-`, `.`), a colon and a non-empty rest, all printable
    /// ASCII without spaces (an `IA5String` in the certificate).
    pub fn uri(uri: &str) -> Result<Self, PkiError> {
        let invalid = |reason| PkiError::InvalidName { kind: "URI", value: uri.to_owned(), reason };
        if !uri.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("it must be printable ASCII without spaces"));
        }
        let Some((scheme, rest)) = uri.split_once(':') else {
            return Err(invalid("it has no scheme"));
        };
        let mut scheme_chars = scheme.chars();
        let scheme_ok = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok || rest.is_empty() {
            return Err(invalid("it must look like scheme:rest"));
        }
        Ok(Self::Uri(uri.to_owned()))
    }

    /// Parses the notation the CLI accepts: `DNS:name`, `IP:addr`, `email:addr`, `URI:uri` (as in openssl's
    /// `subjectAltName`), or a bare value, taken as an IP address if it parses as one, an email address if it has
    /// an `@`, a URI if it has `://`, and a DNS name otherwise.
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        if let Some((kind, value)) = text.split_once(':') {
            match kind.to_ascii_lowercase().as_str() {
                "dns" => return Self::dns(value),
                "ip" => return Self::ip_text(value),
                "email" => return Self::email(value),
                "uri" => return Self::uri(value),
                _ => {}
            }
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            Ok(Self::Ip(ip))
        } else if text.contains('@') {
            Self::email(text)
        } else if text.contains("://") {
            Self::uri(text)
        } else {
            Self::dns(text)
        }
    }

    fn ip_text(text: &str) -> Result<Self, PkiError> {
        text.parse().map(Self::Ip).map_err(|_| PkiError::InvalidName {
            kind: "IP address",
            value: text.to_owned(),
            reason: "it is not an IPv4 or IPv6 address",
        })
    }

    /// The key under which two names count as the same: DNS names and email addresses compare without case.
    fn dedup_key(&self) -> String {
        match self {
            Self::Dns(name) | Self::Email(name) => self.prefixed(&name.to_ascii_lowercase()),
            Self::Ip(ip) => self.prefixed(&ip.to_string()),
            Self::Uri(uri) => self.prefixed(uri),
        }
    }

    fn prefixed(&self, value: &str) -> String {
        format!("{}:{value}", self.kind_label())
    }

    fn kind_label(&self) -> &'static str {
        match self {
            Self::Dns(_) => "DNS",
            Self::Ip(_) => "IP",
            Self::Email(_) => "email",
            Self::Uri(_) => "URI",
        }
    }

    pub(crate) fn to_rcgen(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            Self::Dns(name) => SanType::DnsName(name.as_str().try_into()?),
            Self::Ip(ip) => SanType::IpAddress(*ip),
            Self::Email(address) => SanType::Rfc822Name(address.as_str().try_into()?),
            Self::Uri(uri) => SanType::URI(uri.as_str().try_into()?),
        })
    }
}

impl fmt::Display for SubjectAltName {
    /// The `DNS:name` notation that [`SubjectAltName::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(v) | Self::Email(v) | Self::Uri(v) => write!(f, "{}:{v}", self.kind_label()),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// Refuses a list that names the same thing twice: it is almost always a typing mistake, and some verifiers
/// reject such certificates.
pub fn check_unique(names: &[SubjectAltName]) -> Result<(), PkiError> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name.dedup_key()) {
            return Err(PkiError::DuplicateName(name.to_string()));
        }
    }
    Ok(())
}

/// Drops later repeats of a name, for lists merged from several configuration sources.
pub(crate) fn dedup(names: Vec<SubjectAltName>) -> Vec<SubjectAltName> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().filter(|name| seen.insert(name.dedup_key())).collect()
}

fn check_dns(name: &str, kind: &'static str, value: &str) -> Result<(), PkiError> {
    let invalid = |reason| PkiError::InvalidName { kind, value: value.to_owned(), reason };
    if name.is_empty() {
        return Err(invalid("the host name is empty"));
    }
    if name.len() > 253 {
        return Err(invalid("the host name is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("each dot-separated label must be 1 to 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(invalid("only letters, digits, hyphens and dots are allowed in a host name"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label cannot start or end with a hyphen"));
        }
    }
    Ok(())
}

/// A certificate serial number, as lowercase hexadecimal without separators: the key of issued-certificate
/// records and of the revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(String);

impl Serial {
    /// Length of the serial numbers we issue. 16 random bytes make collisions negligible without a counter that
    /// would have to be stored and locked, and stay well under the 20-byte limit of RFC 5280.
    pub const ISSUED_LEN: usize = 16;

    /// A fresh random serial: positive, and with its top byte non-zero so that its DER encoding keeps all 16
    /// bytes and its hex form is always 32 characters.
    pub fn random() -> Result<Self, PkiError> {
        let mut bytes = [0u8; Self::ISSUED_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Random)?;
        if let Some(first) = bytes.first_mut() {
            *first = (*first & 0x7f) | 0x40;
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// Parses a stored or typed serial. Colons (as openssl prints them) are ignored; leading zero bytes are
    /// dropped so that the same number always has the same text.
    pub fn from_hex(text: &str) -> Result<Self, PkiError> {
        let invalid = || PkiError::InvalidSerial(text.to_owned());
        let digits: String = text.chars().filter(|c| *c != ':').collect();
        if digits.is_empty() || !digits.len().is_multiple_of(2) || digits.len() > 40 {
            return Err(invalid());
        }
        let mut bytes = Vec::with_capacity(digits.len() / 2);
        for pair in digits.as_bytes().chunks(2) {
            let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
            bytes.push(u8::from_str_radix(pair, 16).map_err(|_| invalid())?);
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// The serial as the big-endian bytes of a certificate's serial field (a leading sign byte is dropped).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
        let significant = bytes.get(start..).unwrap_or_default();
        let hex = if significant.is_empty() { "00".to_owned() } else { hex(significant) };
        Self(hex)
    }

    /// The serial as big-endian bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0
            .as_bytes()
            .chunks(2)
            .filter_map(|pair| std::str::from_utf8(pair).ok())
            .filter_map(|pair| u8::from_str_radix(pair, 16).ok())
            .collect()
    }

    /// The lowercase hexadecimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lowercase hexadecimal of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_are_checked() {
        assert!(CommonName::new("press-1").is_ok());
        assert!(CommonName::new("Presse Süd 1").is_ok());
        for bad in ["", " press", "press ", "a\u{0}b", "tab\there", &"x".repeat(65)] {
            assert!(matches!(CommonName::new(bad), Err(PkiError::InvalidName { .. })), "{bad:?}");
        }
        assert_eq!(CommonName::new("Press  One").unwrap().canonical(), "press one");
        assert_eq!(
            CommonName::new("PRESS-1").unwrap().canonical(),
            CommonName::new("press-1").unwrap().canonical()
        );
    }

    #[test]
    fn alt_names_are_checked_and_parsed() {
        assert_eq!(SubjectAltName::parse("gw.local").unwrap(), SubjectAltName::Dns("gw.local".into()));
        assert_eq!(
            SubjectAltName::parse("10.0.0.1").unwrap(),
            SubjectAltName::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(SubjectAltName::parse("IP:::1").unwrap(), SubjectAltName::Ip("::1".parse().unwrap()));
        assert_eq!(
            SubjectAltName::parse("a@b.example").unwrap(),
            SubjectAltName::Email("a@b.example".into())
        );
        assert_eq!(
            SubjectAltName::parse("spiffe://plant/press").unwrap(),
            SubjectAltName::Uri("spiffe://plant/press".into())
        );
        assert_eq!(SubjectAltName::parse("URI:urn:x").unwrap(), SubjectAltName::Uri("urn:x".into()));
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a_b",
            "*.example",
            "a.b.",
            "DNS:",
            "IP:1.2.3",
            "email:@x",
            "email:a@",
            "URI:x",
        ] {
            assert!(matches!(SubjectAltName::parse(bad), Err(PkiError::InvalidName { .. })), "{bad:?}");
        }
        let round = SubjectAltName::parse("email:a@b.example").unwrap();
        assert_eq!(SubjectAltName::parse(&round.to_string()).unwrap(), round);
    }

    #[test]
    fn duplicate_alt_names_are_refused() {
        let names = [SubjectAltName::dns("GW.local").unwrap(), SubjectAltName::dns("gw.LOCAL").unwrap()];
        assert!(matches!(check_unique(&names), Err(PkiError::DuplicateName(_))));
        let names = [SubjectAltName::dns("gw").unwrap(), SubjectAltName::uri("urn:gw").unwrap()];
        assert!(check_unique(&names).is_ok());
    }

    #[test]
    fn serials_are_positive_sixteen_bytes_and_round_trip() {
        for _ in 0..50 {
            let serial = Serial::random().unwrap();
            assert_eq!(serial.as_str().len(), 32);
            let bytes = serial.to_bytes();
            assert_eq!(bytes.len(), Serial::ISSUED_LEN);
            assert!(bytes[0] & 0x80 == 0 && bytes[0] != 0);
            assert_eq!(Serial::from_hex(serial.as_str()).unwrap(), serial);
        }
        assert_eq!(Serial::from_hex("00:AB:01").unwrap().as_str(), "ab01");
        assert_eq!(Serial::from_bytes(&[0, 0]).as_str(), "00");
        for bad in ["", "abc", "zz", &"00".repeat(21)] {
            assert!(matches!(Serial::from_hex(bad), Err(PkiError::InvalidSerial(_))), "{bad:?}");
        }
    }
}
