//! An aggregated API of the operator (external metrics, the runs' pages) registered against a
//! controller process on loopback, as the chart registers it against the operator's Service.

use super::cluster::{eventually, kubectl};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

/// The APIService `version.group`, pointed at `localhost:port` through an ExternalName Service
/// `abc-operator` (the API server refuses loopback endpoints, but proxies to an ExternalName's
/// host at the APIService's port). Removed on drop, so no unavailable aggregated API outlives
/// the test.
pub struct Registration {
    client: Client,
    name: String,
}

impl Registration {
    /// Registers it as the chart does: no caBundle, the operator writes it.
    pub async fn new(
        client: &Client,
        namespace: &str,
        port: u16,
        (group, version, group_priority, version_priority): (&str, &str, i32, i32),
    ) -> Registration {
        let ssa = PatchParams::apply("abc-operator-test").force();
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "abc-operator"},
            "spec": {"type": "ExternalName", "externalName": "localhost"},
        });
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(client.clone(), namespace);
        services
            .patch("abc-operator", &ssa, &Patch::Apply(&service))
            .await
            .unwrap();
        let name = format!("{version}.{group}");
        let apiservice = serde_json::json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": name},
            "spec": {"group": group, "version": version,
                     "groupPriorityMinimum": group_priority, "versionPriority": version_priority,
                     "service": {"namespace": namespace, "name": "abc-operator", "port": port}},
        });
        let api: Api<APIService> = Api::all(client.clone());
        api.patch(&name, &ssa, &Patch::Apply(&apiservice))
            .await
            .unwrap();
        Registration {
            client: client.clone(),
            name,
        }
    }

    /// Waits until the API server says the APIService is Available.
    pub async fn available(&self) {
        let api: Api<APIService> = Api::all(self.client.clone());
        eventually(
            90,
            &format!("the APIService {} Available", self.name),
            || async {
                let status = api.get(&self.name).await.ok()?.status?;
                status
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Available" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Drop cannot await; kubectl is synchronous and always at hand.
        let _ = kubectl()
            .args([
                "delete",
                "apiservice",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}
