//! Certificates and keys for the loopback control plane, generated with rcgen at start.
//!
//! Keys are ECDSA P-256 (rcgen's default): the apiserver accepts them for serving, client
//! authentication and service-account token signing (ES256), and they are fast to generate.

use anyhow::{Context as _, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// A PEM certificate with its PEM (PKCS#8) private key.
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    // The key is a credential: keep it out of debug output and test logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A self-signed certificate authority that issues serving and client certificates.
pub struct CertificateAuthority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl CertificateAuthority {
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = base_params(common_name)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generating a CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key)
            .with_context(|| format!("self-signing CA {common_name}"))?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A TLS server certificate for `names` (IP addresses or DNS names).
    pub fn issue_serving(&self, common_name: &str, names: &[&str]) -> Result<CertAndKey> {
        let mut params = base_params(common_name)?;
        let sans = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .with_context(|| format!("subject alternative names {names:?}"))?
            .subject_alt_names;
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A TLS client certificate that the apiserver's x509 authenticator maps to user
    /// `user` (the subject CN) in `groups` (the subject O attributes).
    ///
    /// rcgen keeps one value per attribute type in a subject, so at most two groups fit:
    /// one as `OrganizationName`, one as the same OID spelled as a custom attribute type.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<CertAndKey> {
        if groups.len() > 2 {
            bail!(
                "a client certificate for {user} can carry at most 2 groups (rcgen keeps one \
                 subject attribute per type), got {groups:?}"
            );
        }
        let mut params = base_params(user)?;
        const ORGANIZATION_NAME_OID: [u64; 4] = [2, 5, 4, 10];
        let group_types = [
            DnType::OrganizationName,
            DnType::CustomDnType(ORGANIZATION_NAME_OID.to_vec()),
        ];
        for (group, ty) in groups.iter().zip(group_types) {
            params.distinguished_name.push(ty, *group);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Result<CertAndKey> {
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a certificate")?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The key pair the apiserver signs service-account tokens with:
/// `(private key PEM for --service-account-signing-key-file,
///   public key PEM for --service-account-key-file)`.
pub fn service_account_signing_key() -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating the service-account signing key")?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

fn base_params(common_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // Fixed, wide validity: these certificates live as long as one test run, and a fixed
    // window avoids clock-skew surprises without a dependency on a time crate.
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}
