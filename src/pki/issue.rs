//! Issuing certificates: Weir's own server certificate, client certificates with a key Weir generates, and
//! client certificates for a device's CSR.
//!
//! Whatever a request or CSR asks for, the certificate gets our profile: not a CA, digital signature only, one
//! extended key usage (server or client authentication), a fresh random serial, an authority key identifier,
//! and a lifetime cut to the CA's own. A CSR contributes its public key, its common name and its alternative
//! names, and nothing else: a device cannot make itself a CA by asking.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;

use super::ca::CertificateAuthority;
use super::cert::{CertInfo, IssuedCert, KeyType, Validity};
use super::error::PkiError;
use super::names::{self, CommonName, Serial, SubjectAltName};

/// Weir's own server certificate for its TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertRequest {
    /// The gateway's host name: the common name and the first DNS name.
    pub hostname: String,
    /// Also list `<hostname>.local`, the name mDNS gives the gateway on a plant network without DNS.
    pub mdns_name: bool,
    /// Further DNS names (a name in the plant's DNS, `localhost`).
    pub extra_dns: Vec<String>,
    /// Addresses clients connect to: the interface addresses, which the network layer enumerates.
    pub addresses: Vec<IpAddr>,
    /// Validity; renewal happens [`ServerCertRequest::RENEWAL_MARGIN`] before the end.
    pub validity: Validity,
    /// Kind of key.
    pub key_type: KeyType,
}

impl ServerCertRequest {
    /// Default lifetime: one year, so that a gateway left alone renews a few times a decade rather than daily.
    pub const LIFETIME: Duration = Duration::from_secs(365 * 86_400);
    /// Renew when this little validity is left: a month leaves time to notice a failing renewal.
    pub const RENEWAL_MARGIN: Duration = Duration::from_secs(30 * 86_400);

    /// A request for `hostname` and `addresses`, with the mDNS name and the defaults.
    pub fn new(hostname: &str, addresses: Vec<IpAddr>) -> Self {
        Self {
            hostname: hostname.to_owned(),
            mdns_name: true,
            extra_dns: Vec::new(),
            addresses,
            validity: Validity::from_now(Self::LIFETIME),
            key_type: KeyType::default(),
        }
    }

    /// The names the certificate will carry, checked; repeats (a host name also given as an extra name) are
    /// dropped rather than refused, since they come from configuration merged from several places.
    pub fn subject_alt_names(&self) -> Result<Vec<SubjectAltName>, PkiError> {
        let mut names = vec![SubjectAltName::dns(&self.hostname)?];
        if self.mdns_name && !self.hostname.to_ascii_lowercase().ends_with(".local") {
            names.push(SubjectAltName::dns(&format!("{}.local", self.hostname))?);
        }
        for name in &self.extra_dns {
            names.push(SubjectAltName::dns(name)?);
        }
        names.extend(self.addresses.iter().copied().map(SubjectAltName::Ip));
        Ok(names::dedup(names))
    }

    /// Whether `current` (the server certificate in use) must be replaced: it is missing from `ca`'s signatures,
    /// expires within `margin` of `now`, or does not carry exactly the names this request asks for (the host
    /// name or an address changed).
    pub fn needs_new_certificate(
        &self,
        current_pem: &str,
        ca: &CertificateAuthority,
        now: SystemTime,
        margin: Duration,
    ) -> bool {
        let Ok(der) = super::cert::first_cert_der(current_pem) else {
            return true;
        };
        let Ok(info) = CertInfo::from_der(&der) else {
            return true;
        };
        let Ok(mut wanted) = self.subject_alt_names() else {
            return true;
        };
        let mut have = info.sans.clone();
        wanted.sort();
        have.sort();
        !ca.signed(&der) || info.needs_renewal(now, margin) || wanted != have
    }
}

/// A client certificate whose key Weir generates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertRequest {
    /// The device or user; becomes the MQTT user name on listeners that take identities from certificates.
    pub common_name: CommonName,
    /// Optional alternative names, for listeners that take the identity from one of them.
    pub sans: Vec<SubjectAltName>,
    /// Validity.
    pub validity: Validity,
    /// Kind of key to generate.
    pub key_type: KeyType,
}

impl ClientCertRequest {
    /// Default lifetime of a client certificate: one year.
    pub const LIFETIME: Duration = Duration::from_secs(365 * 86_400);

    /// A request for `common_name` with no alternative names, a P-256 key and the default lifetime.
    pub fn new(common_name: CommonName) -> Self {
        Self {
            common_name,
            sans: Vec::new(),
            validity: Validity::from_now(Self::LIFETIME),
            key_type: KeyType::default(),
        }
    }
}

/// How a device's CSR is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrOptions {
    /// Validity of the certificate.
    pub validity: Validity,
    /// Common name to use instead of the CSR's: the operator names the device, whatever its firmware put in the
    /// request. Required when the CSR has no common name.
    pub common_name: Option<CommonName>,
}

impl CsrOptions {
    /// Sign with the CSR's own names for `validity`.
    pub fn new(validity: Validity) -> Self {
        Self { validity, common_name: None }
    }
}

/// What a CSR asks for, for the console to show before the operator signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInfo {
    /// The requested common name, checked as any common name is; `None` if the CSR has none.
    pub common_name: Option<CommonName>,
    /// The requested alternative names, checked.
    pub sans: Vec<SubjectAltName>,
}

impl CsrInfo {
    /// Parses a PEM CSR and verifies its signature, without signing anything.
    pub fn from_pem(csr_pem: &str) -> Result<Self, PkiError> {
        parse_csr(csr_pem).map(|(info, _)| info)
    }
}

impl CertificateAuthority {
    /// Issues Weir's server certificate, with a fresh key.
    pub fn issue_server(&self, req: &ServerCertRequest) -> Result<IssuedCert, PkiError> {
        let sans = req.subject_alt_names()?;
        let common_name = CommonName::new(&req.hostname)?;
        let key = req.key_type.generate()?;
        let params =
            self.leaf_params(&common_name, &sans, &req.validity, ExtendedKeyUsagePurpose::ServerAuth)?;
        self.finish(&params, &key, Some(key.serialize_pem()))
    }

    /// Issues a client certificate, with a key generated here.
    pub fn issue_client(&self, req: &ClientCertRequest) -> Result<IssuedCert, PkiError> {
        let key = req.key_type.generate()?;
        let params = self.leaf_params(
            &req.common_name,
            &req.sans,
            &req.validity,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        self.finish(&params, &key, Some(key.serialize_pem()))
    }

    /// Signs a device's CSR (PEM) as a client certificate. The key stays on the device, so the result has no
    /// `key_pem`.
    pub fn sign_csr(&self, csr_pem: &str, options: &CsrOptions) -> Result<IssuedCert, PkiError> {
        let (info, public_key) = parse_csr(csr_pem)?;
        let common_name = options.common_name.clone().or(info.common_name).ok_or(PkiError::InvalidName {
            kind: "common name",
            value: String::new(),
            reason: "the CSR has none; give one",
        })?;
        let params = self.leaf_params(
            &common_name,
            &info.sans,
            &options.validity,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        self.finish(&params, &public_key, None)
    }

    fn leaf_params(
        &self,
        common_name: &CommonName,
        sans: &[SubjectAltName],
        validity: &Validity,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertificateParams, PkiError> {
        names::check_unique(sans)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = sans.iter().map(SubjectAltName::to_rcgen).collect::<Result<_, _>>()?;
        params.serial_number = Some(SerialNumber::from_slice(&Serial::random()?.to_bytes()));
        let (not_before, not_after) = validity.bounds(Some(self.info().not_after))?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn finish(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
        key_pem: Option<String>,
    ) -> Result<IssuedCert, PkiError> {
        let cert = params.signed_by(public_key, &self.issuer)?;
        let info = CertInfo::from_der(cert.der())?;
        Ok(IssuedCert { info, cert_pem: cert.pem(), key_pem })
    }
}

/// Parses and verifies a CSR, keeping its public key, common name and alternative names.
fn parse_csr(csr_pem: &str) -> Result<(CsrInfo, rcgen::PublicKey), PkiError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| PkiError::MalformedCsr(format!("no CERTIFICATE REQUEST block in the PEM text: {e}")))?;
    let request = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => PkiError::CsrSignature,
        rcgen::Error::CouldNotParseCertificationRequest => {
            PkiError::MalformedCsr("the request is not valid DER".into())
        }
        rcgen::Error::UnsupportedExtension => PkiError::CsrRefused(
            "it requests an extension other than names, key usage or basic constraints".into(),
        ),
        rcgen::Error::UnsupportedSignatureAlgorithm => {
            PkiError::CsrRefused("its key type is not supported".into())
        }
        other => PkiError::CsrRefused(other.to_string()),
    })?;
    let common_name = match request.params.distinguished_name.get(&DnType::CommonName) {
        None => None,
        Some(value) => Some(CommonName::new(&dn_text(value).ok_or_else(|| {
            PkiError::CsrRefused("its common name is not in a text encoding we read".into())
        })?)?),
    };
    let mut sans = Vec::new();
    for san in &request.params.subject_alt_names {
        sans.push(match san {
            SanType::DnsName(n) => SubjectAltName::dns(n.as_str())?,
            SanType::Rfc822Name(n) => SubjectAltName::email(n.as_str())?,
            SanType::URI(n) => SubjectAltName::uri(n.as_str())?,
            SanType::IpAddress(ip) => SubjectAltName::Ip(*ip),
            _ => {
                return Err(PkiError::CsrRefused(
                    "it requests an alternative name of an unsupported kind".into(),
                ));
            }
        });
    }
    Ok((CsrInfo { common_name, sans }, request.public_key))
}

fn dn_text(value: &rcgen::DnValue) -> Option<String> {
    match value {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use rcgen::KeyPair;

    use super::*;
    use crate::pki::ca::CaOptions;
    use crate::pki::testutil;

    #[test]
    fn client_certificate_chains_to_the_ca_and_carries_its_names() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let mut req = testutil::client_request("press-1");
        req.sans = vec![
            SubjectAltName::dns("press-1.plant.example").unwrap(),
            SubjectAltName::Ip("10.1.2.3".parse().unwrap()),
            SubjectAltName::email("press-1@plant.example").unwrap(),
            SubjectAltName::uri("urn:weir:press-1").unwrap(),
        ];
        let issued = ca.issue_client(&req).unwrap();
        assert_eq!(issued.info.common_name.as_deref(), Some("press-1"));
        assert_eq!(issued.info.sans, req.sans);
        assert_eq!(issued.info.serial.as_str().len(), 32);
        assert!(!issued.info.is_ca);
        assert!(issued.key_pem.as_deref().unwrap().contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
        testutil::assert_chains_to(&ca, &issued.cert_pem, testutil::Usage::Client);

        let der = crate::pki::cert::first_cert_der(&issued.cert_pem).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = ca.cert_der().clone();
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        x509.verify_signature(Some(ca_x509.public_key())).unwrap();
        assert_eq!(x509.issuer(), ca_x509.subject());
    }

    #[test]
    fn every_key_type_issues_client_certificates() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519] {
            let mut req = testutil::client_request("dev");
            req.key_type = key_type;
            let issued = ca.issue_client(&req).unwrap();
            testutil::assert_chains_to(&ca, &issued.cert_pem, testutil::Usage::Client);
        }
    }

    #[test]
    fn serials_differ_and_duplicate_names_are_refused() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let a = ca.issue_client(&testutil::client_request("a")).unwrap();
        let b = ca.issue_client(&testutil::client_request("a")).unwrap();
        assert_ne!(a.info.serial, b.info.serial);
        let mut req = testutil::client_request("a");
        req.sans = vec![SubjectAltName::dns("x.example").unwrap(), SubjectAltName::dns("X.example").unwrap()];
        assert!(matches!(ca.issue_client(&req), Err(PkiError::DuplicateName(_))));
    }

    #[test]
    fn lifetime_is_cut_to_the_ca_and_renewal_is_due_near_the_end() {
        let ca = CertificateAuthority::generate(&CaOptions {
            validity: Duration::from_secs(10 * 86_400),
            ..CaOptions::default()
        })
        .unwrap();
        let issued = ca.issue_client(&testutil::client_request("a")).unwrap();
        assert_eq!(issued.info.not_after, ca.info().not_after);
        let now = SystemTime::now();
        assert!(!issued.needs_renewal(now, Duration::from_secs(86_400)));
        assert!(issued.needs_renewal(now, Duration::from_secs(11 * 86_400)));
        assert!(issued.needs_renewal(now + Duration::from_secs(20 * 86_400), Duration::ZERO));

        let mut late = testutil::client_request("a");
        late.validity = Validity { not_before: ca.info().not_after, lifetime: Duration::from_secs(60) };
        assert!(matches!(ca.issue_client(&late), Err(PkiError::InvalidValidity(_))));
        late.validity = Validity { not_before: UNIX_EPOCH, lifetime: Duration::ZERO };
        assert!(matches!(ca.issue_client(&late), Err(PkiError::InvalidValidity(_))));
    }

    #[test]
    fn server_certificate_names_the_host_and_is_renewed_when_due_or_changed() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let mut req =
            ServerCertRequest::new("gw-01", vec!["192.168.1.10".parse().unwrap(), "::1".parse().unwrap()]);
        req.extra_dns = vec!["localhost".into(), "GW-01".into()];
        let issued = ca.issue_server(&req).unwrap();
        assert_eq!(issued.info.common_name.as_deref(), Some("gw-01"));
        assert_eq!(
            issued.info.sans,
            vec![
                SubjectAltName::Dns("gw-01".into()),
                SubjectAltName::Dns("gw-01.local".into()),
                SubjectAltName::Dns("localhost".into()),
                SubjectAltName::Ip("192.168.1.10".parse().unwrap()),
                SubjectAltName::Ip("::1".parse().unwrap()),
            ]
        );
        testutil::assert_chains_to(&ca, &issued.cert_pem, testutil::Usage::Server);

        let now = SystemTime::now();
        let margin = ServerCertRequest::RENEWAL_MARGIN;
        assert!(!req.needs_new_certificate(&issued.cert_pem, &ca, now, margin));
        assert!(req.needs_new_certificate(
            &issued.cert_pem,
            &ca,
            now + Duration::from_secs(340 * 86_400),
            margin
        ));
        let mut moved = req.clone();
        moved.addresses = vec!["192.168.1.11".parse().unwrap()];
        assert!(moved.needs_new_certificate(&issued.cert_pem, &ca, now, margin));
        let other_ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        assert!(req.needs_new_certificate(&issued.cert_pem, &other_ca, now, margin));
        assert!(req.needs_new_certificate("", &ca, now, margin));

        let renewed = ca.issue_server(&req).unwrap();
        assert_ne!(renewed.info.serial, issued.info.serial);
        assert!(matches!(
            ca.issue_server(&ServerCertRequest::new("bad host", vec![])),
            Err(PkiError::InvalidName { .. })
        ));
    }

    #[test]
    fn csr_is_signed_with_our_profile_and_without_a_key() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let device_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["sensor-7.plant.example".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "sensor-7");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr_pem = params.serialize_request(&device_key).unwrap().pem().unwrap();

        let info = CsrInfo::from_pem(&csr_pem).unwrap();
        assert_eq!(info.common_name.as_ref().map(CommonName::as_str), Some("sensor-7"));

        let issued = ca.sign_csr(&csr_pem, &CsrOptions::new(Validity::days(30))).unwrap();
        assert!(issued.key_pem.is_none());
        assert_eq!(issued.info.common_name.as_deref(), Some("sensor-7"));
        assert_eq!(issued.info.sans, vec![SubjectAltName::Dns("sensor-7.plant.example".into())]);
        assert!(!issued.info.is_ca, "a CSR asking to be a CA must not get it");
        let der = crate::pki::cert::first_cert_der(&issued.cert_pem).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(x509.public_key().subject_public_key.data.as_ref(), device_key.public_key_raw());
        testutil::assert_chains_to(&ca, &issued.cert_pem, testutil::Usage::Client);

        let mut renamed = CsrOptions::new(Validity::days(30));
        renamed.common_name = Some(CommonName::new("line-2-sensor").unwrap());
        let issued = ca.sign_csr(&csr_pem, &renamed).unwrap();
        assert_eq!(issued.info.common_name.as_deref(), Some("line-2-sensor"));
    }

    #[test]
    fn bad_csrs_get_typed_errors() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let opts = CsrOptions::new(Validity::days(30));
        assert!(matches!(ca.sign_csr("hello", &opts), Err(PkiError::MalformedCsr(_))));
        let not_der = crate::pki::ca::pem_encode("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x01");
        assert!(matches!(ca.sign_csr(&not_der, &opts), Err(PkiError::MalformedCsr(_))));

        let device_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "sensor-7");
        let csr = params.serialize_request(&device_key).unwrap();
        let mut der = csr.der().to_vec();
        let at = der.windows(8).position(|w| w == b"sensor-7").unwrap();
        der[at] = b'S';
        let tampered = crate::pki::ca::pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(ca.sign_csr(&tampered, &opts), Err(PkiError::CsrSignature)));

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, " padded");
        let csr_pem = params.serialize_request(&device_key).unwrap().pem().unwrap();
        assert!(matches!(ca.sign_csr(&csr_pem, &opts), Err(PkiError::InvalidName { .. })));

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr_pem = params.serialize_request(&device_key).unwrap().pem().unwrap();
        assert!(matches!(ca.sign_csr(&csr_pem, &opts), Err(PkiError::InvalidName { .. })));
    }

    #[test]
    fn openssl_made_csrs_are_signed() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("dev.key");
        let csr = dir.path().join("dev.csr");
        for key_spec in
            [&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"][..], &["-newkey", "rsa:2048"][..]]
        {
            let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=plc-3"];
            args.extend_from_slice(key_spec);
            args.extend_from_slice(&["-keyout", key.to_str().unwrap(), "-out", csr.to_str().unwrap()]);
            args.extend_from_slice(&["-addext", "subjectAltName=DNS:plc-3.plant.example,IP:10.0.0.3"]);
            testutil::run_tool("openssl", &args);
            let csr_pem = std::fs::read_to_string(&csr).unwrap();
            let issued = ca.sign_csr(&csr_pem, &CsrOptions::new(Validity::days(1))).unwrap();
            assert_eq!(issued.info.common_name.as_deref(), Some("plc-3"), "{key_spec:?}");
            assert_eq!(issued.info.sans.len(), 2);
            testutil::assert_chains_to(&ca, &issued.cert_pem, testutil::Usage::Client);
        }
    }
}
