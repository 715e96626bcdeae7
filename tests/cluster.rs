//! The loopback control plane itself: what every other integration test relies on.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use support::cluster::{self, TestNamespace, eventually};

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "main", "image": "example.invalid/none:1" }] }
            }
        }
    }))
    .unwrap()
}

async fn running_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect()
}

#[tokio::test]
async fn deployment_pods_run_on_the_kwok_node_and_are_garbage_collected() {
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "cluster").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    deployments
        .create(&PostParams::default(), &deployment("web", 3))
        .await
        .unwrap();
    let running = eventually(60, "3 running pods", || async {
        let running = running_pods(&pods, "web").await;
        (running.len() == 3).then_some(running)
    })
    .await;
    for pod in &running {
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some("kwok-node-0")
        );
    }

    deployments
        .delete("web", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(60, "pods garbage-collected", || async {
        let left = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        left.items.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn deployment_scales_through_its_scale_subresource() {
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "scale").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    deployments
        .create(&PostParams::default(), &deployment("sim", 1))
        .await
        .unwrap();
    let patch = serde_json::json!({ "spec": { "replicas": 4 } });
    deployments
        .patch_scale("sim", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let scale = deployments.get_scale("sim").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(4));
    eventually(60, "4 running pods", || async {
        (running_pods(&pods, "sim").await.len() == 4).then_some(())
    })
    .await;
}
