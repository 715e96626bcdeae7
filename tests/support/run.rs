//! A run on the test cluster whose Redis is a loopback redis-server: the AbcRun, the fake
//! kubelet that runs its worker pods' processes, and a real pyABC master run by the test.

use super::cluster::{self, TestNamespace, eventually, install_crd};
use super::kubelet::{FakeKubelet, RedisTarget};
use abc_operator::api::AbcRun;
use abc_operator::local::redis_server::{RedisServer, RedisServerOptions};
use abc_operator::protocol::{self, Snapshot};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub fn python() -> PathBuf {
    super::python::python()
}

/// A run on the test cluster whose Redis is a loopback redis-server.
pub struct Setup {
    pub client: Client,
    pub ns: TestNamespace,
    pub redis: RedisServer,
    pub runs: Api<AbcRun>,
}

/// A Secret `name` with the Redis password under the key `password`, as users create it.
pub async fn create_password_secret(client: &Client, namespace: &str, name: &str, password: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "stringData": {"password": password}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

pub async fn setup(prefix: &str, workers: u32, runtime: &str, model_sleep: &str) -> Setup {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, prefix).await;
    let redis = RedisServer::start(RedisServerOptions::default()).expect("redis-server starts");
    create_password_secret(&client, &ns.name, "redis-pw", redis.password()).await;
    let run: AbcRun = serde_yaml::from_str(&format!(
        r#"
apiVersion: abc-operator.dev/v1alpha1
kind: AbcRun
metadata: {{name: sim}}
spec:
  image: worker
  workers:
    replicas: {workers}
    runtime: {runtime}
    heartbeatTimeoutSeconds: 30
    env: [{{name: ABC_TEST_MODEL_SLEEP, value: "{model_sleep}"}}]
  redis:
    external: {{host: 127.0.0.1, port: {port}, passwordSecret: {{name: redis-pw}}}}
"#,
        port = redis.port()
    ))
    .unwrap();
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    runs.create(&PostParams::default(), &run).await.unwrap();
    Setup {
        client,
        ns,
        redis,
        runs,
    }
}

impl Setup {
    pub fn kubelet(&self) -> FakeKubelet {
        let target = RedisTarget {
            host: "127.0.0.1".into(),
            port: self.redis.port(),
            password: self.redis.password().into(),
        };
        FakeKubelet::start(self.client.clone(), &self.ns.name, target, python())
    }

    /// Merges `patch` into the run `sim`, as `kubectl patch --type merge` would.
    pub async fn patch_run(&self, patch: serde_json::Value) {
        self.runs
            .patch(
                "sim",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }

    /// The master, run by the test as a user would from a laptop.
    pub fn master(&self, population: u32, generations: u32) -> Child {
        self.master_with(population, generations, &[])
    }

    /// The master, with more of its settings (tests/fixtures/protocol_master.py).
    pub fn master_with(&self, population: u32, generations: u32, env: &[(&str, &str)]) -> Child {
        let results = tempfile::tempdir().unwrap().keep();
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/protocol_master.py"
            ))
            .env("ABC_REDIS_HOST", "127.0.0.1")
            .env("ABC_REDIS_PORT", self.redis.port().to_string())
            .env("ABC_REDIS_PASSWORD", self.redis.password())
            .env("ABC_RESULTS_DIR", &results)
            .env("MPLCONFIGDIR", &results)
            .env("PROTO_POPULATION", population.to_string())
            .env("PROTO_GENERATIONS", generations.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(results.join("master.log")).unwrap())
            .spawn()
            .unwrap()
    }

    /// Waits until a worker is inside a generation with most of it still ahead (see
    /// [`worker_inside`]), and returns its pod's name.
    pub async fn worker_inside_a_generation(&self) -> String {
        let conn = protocol::connect(&self.redis.endpoint()).await.unwrap();
        eventually(180, "a worker inside a generation", || {
            let mut conn = conn.clone();
            async move { worker_inside(&Snapshot::read(&mut conn).await.ok()?, ..) }
        })
        .await
    }

    /// Waits (bounded) until an Event with `reason` was published on the run's namespace.
    pub async fn wait_for_event(&self, reason: &str) {
        eventually(30, &format!("a {reason} event"), || async {
            (!self.events(reason).await.is_empty()).then_some(())
        })
        .await;
    }

    pub async fn events(&self, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
}

/// Waits for the master to exit (bounded) and returns whether it succeeded.
pub async fn master_finishes(master: &mut Child, secs: u64) -> bool {
    eventually(secs, "the master to finish", || {
        let status = master.try_wait().unwrap();
        async move { status }
    })
    .await
    .success()
}

/// The pod of a worker inside one of `generations` with most of that generation still ahead,
/// read from the worker ledgers in the run's Redis, not from the status: the status lags, and a
/// worker killed after it left its generation owes nothing, so there is nothing to repair.
pub fn worker_inside(snapshot: &Snapshot, generations: impl RangeBounds<i64>) -> Option<String> {
    let (analysis, t) = (snapshot.analysis_id.as_deref()?, snapshot.generation?);
    let most_ahead = snapshot.n_acc.unwrap_or(0) < snapshot.n_req? / 2;
    (generations.contains(&t) && most_ahead).then_some(())?;
    snapshot
        .ledgers
        .iter()
        .find(|l| l.joined && l.in_generation(analysis, t))?
        .worker
        .clone()
}
