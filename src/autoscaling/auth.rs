//! Who may read the external metrics, delegated to the API server as any aggregated API server
//! does: the caller is the aggregation layer (a client certificate from the API server's
//! `requestheader` CA, with an allowed common name) acting for the user named in its headers,
//! and the user's right to read a metric is a `SubjectAccessReview`.

use super::AutoscalingError;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The API server's published settings for its aggregation layer.
const AUTH_CONFIG_MAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");
/// How long an authorization decision is reused.
const DECISION_TTL: Duration = Duration::from_secs(10);

/// How the aggregation layer identifies itself and the user it acts for.
#[derive(Debug, Clone)]
pub struct RequestHeaderConfig {
    /// CA certificates of the aggregation layer's client certificate.
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Common names the client certificate may have (empty: any the CA signed).
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
}

impl RequestHeaderConfig {
    /// Reads `kube-system/extension-apiserver-authentication`.
    pub async fn load(client: &kube::Client) -> Result<RequestHeaderConfig, AutoscalingError> {
        let (namespace, name) = AUTH_CONFIG_MAP;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let cm = api.get(name).await.map_err(|e| {
            AutoscalingError::RequestHeader(format!("reading ConfigMap {namespace}/{name}: {e}"))
        })?;
        RequestHeaderConfig::from_data(&cm.data.unwrap_or_default())
    }

    pub fn from_data(
        data: &std::collections::BTreeMap<String, String>,
    ) -> Result<RequestHeaderConfig, AutoscalingError> {
        let bad = |why: String| AutoscalingError::RequestHeader(why);
        let ca = data.get("requestheader-client-ca-file").ok_or_else(|| {
            bad("the API server has no aggregation layer configured (no requestheader-client-ca-file; start kube-apiserver with --requestheader-client-ca-file and --proxy-client-cert-file)".into())
        })?;
        let client_ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("requestheader-client-ca-file is not PEM: {e}")))?;
        if client_ca.is_empty() {
            return Err(bad(
                "requestheader-client-ca-file holds no certificate".into()
            ));
        }
        let list = |key: &str, default: &[&str]| -> Result<Vec<String>, AutoscalingError> {
            match data.get(key) {
                None => Ok(default.iter().map(|s| s.to_string()).collect()),
                Some(text) => serde_json::from_str(text)
                    .map_err(|e| bad(format!("{key} is not a JSON list of strings: {e}"))),
            }
        };
        Ok(RequestHeaderConfig {
            client_ca,
            allowed_names: list("requestheader-allowed-names", &[])?,
            username_headers: list("requestheader-username-headers", &["X-Remote-User"])?,
            group_headers: list("requestheader-group-headers", &["X-Remote-Group"])?,
        })
    }

    /// Whether a client certificate (already verified against `client_ca` by the TLS layer) is
    /// the aggregation layer's.
    pub fn is_proxy(&self, cert: &CertificateDer<'_>) -> bool {
        if self.allowed_names.is_empty() {
            return true;
        }
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
            return false;
        };
        parsed
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .any(|cn| self.allowed_names.iter().any(|n| n == cn))
    }

    /// The user the aggregation layer acts for, from its headers.
    pub fn user(&self, headers: &axum::http::HeaderMap) -> Option<User> {
        let name = self
            .username_headers
            .iter()
            .find_map(|h| headers.get(h.as_str())?.to_str().ok())
            .filter(|n| !n.is_empty())?
            .to_string();
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()))
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        Some(User { name, groups })
    }
}

/// The caller of one TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The API server's aggregation layer (client certificate checked).
    AggregationLayer,
    /// Anyone else: refused, this API is served through the API server only.
    Unauthenticated,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// Who asked to do what: (user, the review's resource attributes).
type DecisionKey = (User, String);

/// `SubjectAccessReview`s with a short cache, so an HPA polling every few seconds costs the API
/// server one review per user and metric every [`DECISION_TTL`].
pub struct Authorizer {
    client: kube::Client,
    decisions: Mutex<HashMap<DecisionKey, (bool, Instant)>>,
}

impl Authorizer {
    pub fn new(client: kube::Client) -> Authorizer {
        Authorizer {
            client,
            decisions: Mutex::default(),
        }
    }

    /// May `user` read `metric` in `namespace` (verb `list`, as the API server's own request
    /// attributes name a GET of the metric collection)?
    pub async fn may_read(
        &self,
        user: &User,
        namespace: &str,
        metric: &str,
    ) -> Result<bool, String> {
        self.may(
            user,
            ResourceAttributes {
                group: Some(super::external_metrics::GROUP.into()),
                version: Some(super::external_metrics::VERSION.into()),
                resource: Some(metric.into()),
                namespace: Some(namespace.into()),
                verb: Some("list".into()),
                ..ResourceAttributes::default()
            },
        )
        .await
    }

    /// May `user` do what `attributes` say (a `SubjectAccessReview`, cached)?
    pub async fn may(&self, user: &User, attributes: ResourceAttributes) -> Result<bool, String> {
        let key = (user.clone(), format!("{attributes:?}"));
        if let Some((allowed, at)) = self
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < DECISION_TTL
        {
            return Ok(*allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(attributes),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("authorization check (SubjectAccessReview) failed: {e}"))?;
        let allowed = reviewed.status.is_some_and(|s| s.allowed);
        let mut decisions = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        // Expired decisions go on each insert, so the cache holds only the last TTL's callers.
        decisions.retain(|_, (_, at)| at.elapsed() < DECISION_TTL);
        decisions.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cert(cn: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().clone()
    }

    fn data(ca: &CertificateDer<'_>, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca.as_ref())
        );
        let mut d = BTreeMap::from([("requestheader-client-ca-file".to_string(), pem)]);
        d.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        d
    }

    #[test]
    fn only_allowed_proxy_names_act_for_users() {
        let ca = cert("front-proxy-ca");
        let config = RequestHeaderConfig::from_data(&data(
            &ca,
            &[
                ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
                ("requestheader-username-headers", r#"["X-Remote-User"]"#),
                ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
            ],
        ))
        .unwrap();
        assert!(config.is_proxy(&cert("front-proxy-client")));
        assert!(!config.is_proxy(&cert("system:admin")));

        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(config.user(&headers), None);
        headers.insert(
            "x-remote-user",
            "system:serviceaccount:kube-system:hpa".parse().unwrap(),
        );
        headers.append("x-remote-group", "system:serviceaccounts".parse().unwrap());
        headers.append("x-remote-group", "system:authenticated".parse().unwrap());
        let user = config.user(&headers).unwrap();
        assert_eq!(user.name, "system:serviceaccount:kube-system:hpa");
        assert_eq!(
            user.groups,
            ["system:serviceaccounts", "system:authenticated"]
        );
    }

    #[test]
    fn a_cluster_without_aggregation_layer_is_named() {
        let err = RequestHeaderConfig::from_data(&BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("--requestheader-client-ca-file"),
            "{err}"
        );
        let bad = data(
            &cert("ca"),
            &[("requestheader-allowed-names", "front-proxy-client")],
        );
        let err = RequestHeaderConfig::from_data(&bad).unwrap_err();
        assert!(
            err.to_string().contains("requestheader-allowed-names"),
            "{err}"
        );
    }
}
