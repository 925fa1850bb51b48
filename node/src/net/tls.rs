//! TLS for QUIC: mutual TLS with the cluster CA, and who a peer is from its certificate.
//!
//! Every node certificate carries the DNS names `node.starling` (what dialers verify, so a
//! dialer needs only an address) and `<id>.node.starling` (who it is); a user certificate
//! carries `<name>.user.starling` (an admin) or `<name>.<role>.starling` (a deployer or a
//! viewer; see [`crate::identity::holder_dns_name`]). The server requires a certificate from the cluster CA for
//! everything except the join exchange, where the joiner has none yet and proves itself with
//! the token's secret instead. The joiner in turn trusts the server only if the server's chain
//! holds the CA whose fingerprint the token pins.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::quic::QuicSettings;
use crate::identity::{Role, fingerprint_of};

/// The name every node certificate is valid for; dialers verify it.
pub const NODE_SERVER_NAME: &str = "node.starling";
/// ALPN protocol id of Starling's QUIC.
const ALPN: &[u8] = b"starling/1";

/// Errors building TLS settings.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// A certificate chain and key to present, with the CA to trust.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// The cluster CA certificate.
    pub ca: CertificateDer<'static>,
    /// This side's certificate.
    pub cert: CertificateDer<'static>,
    /// Its PKCS#8 private key.
    pub key: Vec<u8>,
}

impl TlsIdentity {
    /// From PEM text as written by `starling init`, `join` and `user add`.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let der = |pem: &str, what: &str| {
            crate::identity::pem_der(pem).ok_or_else(|| TlsError(format!("{what} is not PEM")))
        };
        Ok(TlsIdentity {
            ca: CertificateDer::from(der(ca_pem, "the CA certificate")?),
            cert: CertificateDer::from(der(cert_pem, "the certificate")?),
            key: der(key_pem, "the private key")?,
        })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(err)?;
        Ok(Arc::new(roots))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: requires a client certificate from the CA, except that a client without one
/// may connect (the handler then only answers the join exchange).
pub fn server_config(
    identity: &TlsIdentity,
    settings: &QuicSettings,
) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(identity.roots()?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(err)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![identity.cert.clone(), identity.ca.clone()],
            identity.key(),
        )
        .map_err(err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(settings));
    Ok(config)
}

/// Client side: trusts the CA, presents this side's certificate; the default transport.
pub fn client_config(identity: &TlsIdentity) -> Result<quinn::ClientConfig, TlsError> {
    client_config_with(identity, &QuicSettings::default())
}

/// [`client_config`] with `settings`' transport (the agent's own dialing).
pub fn client_config_with(
    identity: &TlsIdentity,
    settings: &QuicSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_root_certificates(identity.roots()?)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key())
        .map_err(err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    finish_client(tls, settings)
}

/// Client side for joining: no certificate yet; trusts a server whose chain holds the CA with
/// `ca_fingerprint` and whose certificate that CA signed.
pub fn join_client_config(ca_fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, TlsError> {
    let verifier = PinnedCa {
        fingerprint: ca_fingerprint,
        provider: provider(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    finish_client(tls, &QuicSettings::default())
}

fn finish_client(
    tls: rustls::ClientConfig,
    settings: &QuicSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(settings));
    Ok(config)
}

/// Idle connections close after `idle_timeout`; keep-alives keep pooled peer connections
/// open. The other side may open `streams_per_connection_max` bidirectional streams at once
/// (every exchange is one) and no unidirectional ones (none are used).
fn transport(settings: &QuicSettings) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(settings.keep_alive_interval));
    if let Ok(idle) = quinn::IdleTimeout::try_from(settings.idle_timeout) {
        transport.max_idle_timeout(Some(idle));
    }
    transport.max_concurrent_bidi_streams(settings.streams_per_connection_max.into());
    transport.max_concurrent_uni_streams(0u32.into());
    Arc::new(transport)
}

/// Who is on the other end of a connection: role and name from its certificate, or `None`
/// when it presented none (a joiner).
pub fn peer_of(connection: &quinn::Connection) -> Option<(Role, String)> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    name_of(chain.first()?)
}

/// Role and name from a certificate's DNS names (see [`crate::identity::holder_dns_name`]).
pub fn name_of(cert: &CertificateDer<'_>) -> Option<(Role, String)> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    parsed
        .valid_dns_names()
        .find_map(crate::identity::holder_of_dns_name)
}

/// Trusts a chain that holds the pinned CA, then verifies the server certificate against it.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint_of(c.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the peer is not part of the cluster the join token names (CA fingerprint differs)"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use starling_protocol::NodeId;
    use starling_protocol::access::OperatorRole;

    use super::*;
    use crate::identity::ClusterCa;

    #[test]
    fn certificate_names_say_who_and_what() {
        let ca = ClusterCa::create("edge").expect("ca");
        let node = ca
            .issue(Role::Node, &NodeId::new("gw-7").expect("id"))
            .expect("node cert");
        let user = ca
            .issue(
                Role::User(OperatorRole::Admin),
                &NodeId::new("alice").expect("id"),
            )
            .expect("user cert");
        let viewer = ca
            .issue(
                Role::User(OperatorRole::Viewer),
                &NodeId::new("eve").expect("id"),
            )
            .expect("viewer cert");
        let der = |pem: &str| CertificateDer::from(crate::identity::pem_der(pem).expect("pem"));
        assert_eq!(
            name_of(&der(&node.cert_pem)),
            Some((Role::Node, "gw-7".into()))
        );
        assert_eq!(
            name_of(&der(&user.cert_pem)),
            Some((Role::User(OperatorRole::Admin), "alice".into()))
        );
        assert_eq!(
            name_of(&der(&viewer.cert_pem)),
            Some((Role::User(OperatorRole::Viewer), "eve".into()))
        );
        assert!(name_of(&CertificateDer::from(vec![1, 2, 3])).is_none());
        let identity =
            TlsIdentity::from_pem(ca.cert_pem(), &node.cert_pem, &node.key_pem).expect("identity");
        assert!(server_config(&identity, &QuicSettings::default()).is_ok());
        assert!(client_config(&identity).is_ok());
        assert!(join_client_config(ca.fingerprint()).is_ok());
    }
}
