//! The external metrics API's serving certificate: from files (e.g. a Secret the chart mounts,
//! issued by cert-manager), or generated at start by a private CA whose certificate the
//! operator writes into its APIService's `caBundle` so the API server trusts it.

use super::AutoscalingError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// A certificate chain and its key, with the CA that signed it when the operator made it.
pub struct ServingCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// PEM of the generated CA, for the APIService's `caBundle`.
    pub generated_ca_pem: Option<String>,
}

impl ServingCert {
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServingCert, AutoscalingError> {
        let bad = |path: &Path, e: &dyn std::fmt::Display| {
            AutoscalingError::Certificate(format!("{}: {e}", path.display()))
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, &e))?;
        if chain.is_empty() {
            return Err(bad(cert, &"no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
        Ok(ServingCert {
            chain,
            key,
            generated_ca_pem: None,
        })
    }

    /// A fresh CA and a serving certificate for `dns_names` (the Service's names), valid for a
    /// year; a restart makes new ones (and rewrites the caBundle).
    pub fn generate(dns_names: &[String]) -> Result<ServingCert, AutoscalingError> {
        let fail = |e: rcgen::Error| AutoscalingError::Certificate(format!("generating: {e}"));
        let now = time::OffsetDateTime::now_utc();
        let validity = |p: &mut rcgen::CertificateParams| {
            p.not_before = now - time::Duration::minutes(5);
            p.not_after = now + time::Duration::days(365);
        };
        let ca_key = rcgen::KeyPair::generate().map_err(fail)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "abc-operator external metrics CA",
        );
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        validity(&mut ca_params);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(fail)?;

        let mut names = dns_names.to_vec();
        names.push("localhost".into());
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let mut params = rcgen::CertificateParams::new(names).map_err(fail)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "abc-operator");
        params.subject_alt_names.push(rcgen::SanType::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params);
        let cert = params.signed_by(&key, &ca).map_err(fail)?;
        Ok(ServingCert {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| AutoscalingError::Certificate(e.to_string()))?,
            generated_ca_pem: Some(ca.pem()),
        })
    }
}

/// Writes `ca_pem` into the APIService's `caBundle` (server-side apply of that one field, so the
/// chart keeps owning the rest).
pub async fn publish_ca_bundle(
    client: &kube::Client,
    apiservice: &str,
    ca_pem: &str,
) -> Result<(), AutoscalingError> {
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<APIService> = Api::all(client.clone());
    let patch = serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": apiservice},
        "spec": {"caBundle": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca_pem)},
    });
    match api.get_opt(apiservice).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(AutoscalingError::ApiService(format!(
                "APIService {apiservice:?} does not exist; install it with the chart (externalMetrics.enabled)"
            )));
        }
        Err(e) => {
            return Err(AutoscalingError::ApiService(format!(
                "reading APIService {apiservice:?}: {e}"
            )));
        }
    }
    api.patch(
        apiservice,
        &PatchParams::apply(crate::api::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| {
        AutoscalingError::ApiService(format!(
            "setting the caBundle of APIService {apiservice:?}: {e}"
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn generated_certificate_chains_to_the_published_ca() {
        let cert = ServingCert::generate(&["abc-operator.abc-system.svc".into()]).unwrap();
        let ca_pem = cert.generated_ca_pem.as_deref().unwrap();
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            rustls::crypto::ring::default_provider().into(),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("abc-operator.abc-system.svc").unwrap();
        verifier
            .verify_server_cert(
                &cert.chain[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("the serving certificate verifies against the caBundle for the Service name");
        let other = rustls::pki_types::ServerName::try_from("other.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &cert.chain[0],
                    &[],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
    }
}
