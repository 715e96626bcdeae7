//! A stand-in kubelet for worker pods on the kwok node: kwok marks pods Running but runs
//! nothing, so this harness runs each worker pod's process locally (the shipped entrypoint with
//! the pod's own environment, Redis pointed at the test's loopback redis-server) and ties their
//! lives together as a kubelet would:
//! - a pod that appears Running gets a worker process named after the pod;
//! - a pod that is deleted (kwok deletes at once: grace 0) has its process SIGKILLed;
//! - a process that exits makes the pod's worker container `terminated` with its exit code;
//!   if the pod is still there 10 s later (a kubelet's first restart back-off) the container is
//!   restarted and the pod shows `CrashLoopBackOff` — what the operator must prevent.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the worker processes find Redis.
#[derive(Clone)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub password: String,
}

struct Worker {
    child: Child,
    /// When the process started, as a kubelet reports the container's `startedAt`.
    started_at: k8s_openapi::jiff::Timestamp,
    exited_at: Option<Instant>,
}

/// What the harness saw, for assertions.
#[derive(Default, Clone, Debug)]
pub struct KubeletLog {
    pub started: Vec<String>,
    pub killed: Vec<String>,
    /// (pod, exit code)
    pub exited: Vec<(String, i32)>,
    pub crash_loops: Vec<String>,
}

pub struct FakeKubelet {
    task: tokio::task::JoinHandle<()>,
    workers: Arc<Mutex<HashMap<String, Worker>>>,
    pub log: Arc<Mutex<KubeletLog>>,
}

impl FakeKubelet {
    /// Starts running the worker pods of `namespace` (label `abc-operator.dev/component=worker`).
    pub fn start(
        client: Client,
        namespace: &str,
        redis: RedisTarget,
        python: PathBuf,
    ) -> FakeKubelet {
        let dir = tempfile::tempdir().unwrap().keep();
        let entrypoint = abc_operator::protocol::write_worker_files(&dir).unwrap();
        let workers: Arc<Mutex<HashMap<String, Worker>>> = Arc::default();
        let log: Arc<Mutex<KubeletLog>> = Arc::default();
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let (w, l) = (workers.clone(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                tick(&pods, &w, &l, &redis, &python, &entrypoint, &dir).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        FakeKubelet { task, workers, log }
    }

    /// The pid of a pod's worker process, if it runs.
    pub fn pid(&self, pod: &str) -> Option<u32> {
        let workers = self.workers.lock().unwrap();
        workers
            .get(pod)
            .filter(|w| w.exited_at.is_none())
            .map(|w| w.child.id())
    }

    /// Pods whose worker process runs now.
    pub fn running(&self) -> Vec<String> {
        let workers = self.workers.lock().unwrap();
        workers
            .iter()
            .filter(|(_, w)| w.exited_at.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
        for (_, mut w) in self.workers.lock().unwrap().drain() {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

async fn tick(
    pods: &Api<Pod>,
    workers: &Mutex<HashMap<String, Worker>>,
    log: &Mutex<KubeletLog>,
    redis: &RedisTarget,
    python: &PathBuf,
    entrypoint: &PathBuf,
    dir: &PathBuf,
) {
    let Ok(list) = pods
        .list(&ListParams::default().labels("abc-operator.dev/component=worker"))
        .await
    else {
        return;
    };
    let live: HashMap<String, Pod> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect();

    let mut to_patch = Vec::new();
    {
        let mut workers = workers.lock().unwrap();
        // Deleted pods: SIGKILL their process (kwok deletes with grace 0).
        let gone: Vec<String> = workers
            .keys()
            .filter(|n| !live.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            let mut w = workers.remove(&name).unwrap();
            if w.exited_at.is_none() {
                let _ = w.child.kill();
                log.lock().unwrap().killed.push(name.clone());
            }
            let _ = w.child.wait();
        }
        // Exited processes: the container terminated; restart after back-off like a kubelet.
        for (name, w) in workers.iter_mut() {
            if w.exited_at.is_none() {
                if let Ok(Some(status)) = w.child.try_wait() {
                    let code = status.code().unwrap_or(137);
                    w.exited_at = Some(Instant::now());
                    log.lock().unwrap().exited.push((name.clone(), code));
                    to_patch.push((name.clone(), terminated(code, w.started_at)));
                }
            } else if w
                .exited_at
                .is_some_and(|t| t.elapsed() > Duration::from_secs(10))
            {
                log.lock().unwrap().crash_loops.push(name.clone());
                to_patch.push((name.clone(), crash_loop()));
                w.exited_at = None;
                if let Some(pod) = live.get(name) {
                    w.child = spawn(pod, redis, python, entrypoint, dir);
                    w.started_at = k8s_openapi::jiff::Timestamp::now();
                }
            }
        }
        // New Running pods: start their worker.
        for (name, pod) in &live {
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && !workers.contains_key(name) {
                let child = spawn(pod, redis, python, entrypoint, dir);
                log.lock().unwrap().started.push(name.clone());
                workers.insert(
                    name.clone(),
                    Worker {
                        child,
                        started_at: k8s_openapi::jiff::Timestamp::now(),
                        exited_at: None,
                    },
                );
            }
        }
    }
    for (name, status) in to_patch {
        // kwok leaves pods with this annotation to us, then the status is what we write.
        let annotate =
            serde_json::json!({"metadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}}});
        let _ = pods
            .patch(&name, &PatchParams::default(), &Patch::Merge(&annotate))
            .await;
        let _ = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await;
    }
}

fn spawn(
    pod: &Pod,
    redis: &RedisTarget,
    python: &PathBuf,
    entrypoint: &PathBuf,
    dir: &PathBuf,
) -> Child {
    let name = pod.name_any();
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let mut cmd = Command::new(python);
    cmd.arg(entrypoint);
    // The pod's literal environment (runtime, processes, heartbeat, ...), then what a kubelet
    // would resolve: the downward-API worker id, the Secret's password, and Redis on loopback.
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            cmd.env(&var.name, value);
        }
    }
    cmd.env("ABC_WORKER_ID", &name)
        .env("ABC_REDIS_HOST", &redis.host)
        .env("ABC_REDIS_PORT", redis.port.to_string())
        .env("ABC_REDIS_PASSWORD", &redis.password)
        .env("HOME", dir)
        .env("MPLCONFIGDIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    cmd.spawn().expect("the worker process starts")
}

fn terminated(code: i32, started_at: k8s_openapi::jiff::Timestamp) -> serde_json::Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    serde_json::json!({"status": {"containerStatuses": [{
        "name": "worker", "image": "worker", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "reason": if code == 0 {"Completed"} else {"Error"},
                                  "startedAt": started_at.to_string(), "finishedAt": now}}
    }]}})
}

fn crash_loop() -> serde_json::Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    serde_json::json!({"status": {"containerStatuses": [{
        "name": "worker", "image": "worker", "imageID": "", "ready": false, "restartCount": 1,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 0, "finishedAt": now, "startedAt": now}}
    }]}})
}
