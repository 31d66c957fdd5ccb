//! TLS on the client side: one rustls client configuration per run, built once and shared by every connection
//! (rumqttc's rustls transport takes it as is, so a connection costs a handshake and nothing more).
//!
//! Every handshake is a full one: session resumption is off, because a shared configuration would otherwise let
//! the later clients of a storm resume sessions the first ones obtained, which devices coming back after a power
//! cut cannot do. The crypto provider is `ring`, as in the `weir` package; TLS 1.3 and 1.2 are offered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The client side's TLS options, shared by every scenario.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct TlsArgs {
    /// Connect over TLS (needs --cafile).
    #[arg(long)]
    pub(crate) tls: bool,
    /// PEM file of the CA certificate(s) the server certificate must chain to.
    #[arg(long, value_name = "PATH", requires = "tls")]
    pub(crate) cafile: Option<PathBuf>,
    /// Client certificate (PEM, optionally followed by its chain), for mutual TLS; with --key.
    #[arg(long, value_name = "PATH", requires_all = ["tls", "key"])]
    pub(crate) cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "PATH", requires_all = ["tls", "cert"])]
    pub(crate) key: Option<PathBuf>,
    /// Name the server certificate must carry (DNS name or IP address); default --host. Only the verification
    /// uses it: the connection still goes to --host, with --host as SNI.
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub(crate) tls_server_name: Option<String>,
}

/// The client configuration for `--tls`, or `None` for plain TCP. Reads and checks every file here, so that a
/// wrong path fails the run at once instead of every connection.
pub(crate) fn client_config(args: &TlsArgs, host: &str) -> Result<Option<Arc<ClientConfig>>> {
    if !args.tls {
        return Ok(None);
    }
    let cafile = args.cafile.as_deref().context("--tls needs --cafile (the PEM CA certificate to trust)")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in read_certs(cafile)? {
        roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", cafile.display()))?;
    }
    let name = args.tls_server_name.as_deref().unwrap_or(host);
    let name = ServerName::try_from(name.to_owned())
        .with_context(|| format!("{name:?} is neither a DNS name nor an IP address"))?;
    let verifier = FixedName {
        inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?,
        name,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("{}: no private key", key.display()))?;
            builder.with_client_auth_cert(chain, key).context("client certificate and key")?
        }
        _ => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Ok(Some(Arc::new(config)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no CERTIFICATE block", path.display());
    }
    Ok(certs)
}

/// rustls' WebPKI verification against a name fixed in advance rather than the host rumqttc connects to (which
/// it also uses as the name to verify), so that `--host 127.0.0.1 --tls-server-name gateway.local` works.
#[derive(Debug)]
struct FixedName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
