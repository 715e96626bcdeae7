//! `abc_operator.connect` on the real node: a pyABC master in a Python process on this machine,
//! as a notebook or a laptop runs one, sampling through an AbcRun's workers in their pods. The
//! process has what a user installs (`pip install './python[connect]'`: the package's sources
//! on its path, the pinned `kubernetes` client in the test venv) and the real node's
//! kubeconfig; nothing else forwards or configures anything for it.

use super::support::cluster::{TestNamespace, events_published, events_with_reason, eventually};
use super::support::python::{Proc, python};
use super::{
    EXAMPLES, NODE, apply_example, assert_every_generation_complete_in, install_operator, kubectl,
    posterior_mean, slow_model, wait_for_phase,
};
use abc_operator::api::AbcRun;
use kube::api::{Api, ListParams};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A notebook's cells as one script: the Gaussian example's model (imported from
/// examples/gaussian/gaussian.py, as a notebook imports a model file beside it, and pickled
/// by value: the workers do not have it on their path), sampled by the AbcRun's workers
/// through `abc_operator.connect`. Prints the example's summary (`generation t: N particles,
/// ...`). With `CONNECT_DROP_IN_GENERATION`, a thread breaks every forwarded stream while
/// that generation is being sampled, and says how it went; with `CONNECT_MODULE_VERSION`, the
/// module says it is of that version.
const NOTEBOOK: &str = r#"
import json, os, sys, threading, time
import cloudpickle
import numpy as np
import pyabc
import abc_operator
import gaussian

cloudpickle.register_pickle_by_value(gaussian)
# As if the installed package were of another release than the operator.
abc_operator.__version__ = os.environ.get("CONNECT_MODULE_VERSION", abc_operator.__version__)
create = json.loads(os.environ["CONNECT_CREATE"]) if os.environ.get("CONNECT_CREATE") else None
drop_in = int(os.environ.get("CONNECT_DROP_IN_GENERATION", "-1"))

with abc_operator.connect(
    os.environ["CONNECT_RUN"], namespace=os.environ["CONNECT_NAMESPACE"], create=create
) as run:
    print(f"connected: {run!r}", flush=True)
    sampler = run.sampler()
    sampling, sampled = threading.Event(), threading.Event()
    sample = sampler.sample_until_n_accepted

    def sample_until_n_accepted(n, simulate_one, t, **kwargs):
        if t == drop_in:
            sampling.set()
        result = sample(n, simulate_one, t, **kwargs)
        if t == drop_in:
            sampled.set()
        return result

    sampler.sample_until_n_accepted = sample_until_n_accepted

    def drop():
        sampling.wait()
        time.sleep(1)
        before = run.streams_opened
        live = run._drop_streams()
        inside = not sampled.is_set()
        deadline = time.monotonic() + 60
        while run.streams_opened == before and time.monotonic() < deadline:
            time.sleep(0.05)
        print(
            f"dropped {live} live streams inside generation {drop_in}: {inside}; "
            f"new streams after the drop: {run.streams_opened - before}",
            flush=True,
        )

    if drop_in >= 0:
        threading.Thread(target=drop, daemon=True).start()
    prior = pyabc.Distribution(mu=pyabc.RV("uniform", -5, 10))
    abc = pyabc.ABCSMC(
        gaussian.model, prior, gaussian.distance,
        population_size=gaussian.POPULATION_SIZE, sampler=sampler,
    )
    history = abc_operator.run(
        abc, "gaussian.db", gaussian.OBSERVED,
        minimum_epsilon=gaussian.MINIMUM_EPSILON, max_nr_populations=gaussian.MAX_GENERATIONS,
    )
    df, w = history.get_distribution(m=0, t=history.max_t)
    mu = df["mu"].to_numpy()
    print(f"  mu: weighted mean {float(np.sum(w * mu)):.3f}")
    populations = history.get_all_populations()
    for row in populations[populations.t >= 0].itertuples():
        print(f"  generation {row.t}: {row.particles} particles, {row.samples} evaluations")
    deadline = time.monotonic() + 60
    while run.worker_versions is None and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"worker versions: {json.dumps(run.worker_versions)}", flush=True)
    print(f"streams opened: {run.streams_opened}", flush=True)
"#;

/// The Python process of a user on this machine: the package from python/ (as `pip install
/// './python[connect]'` installs it), the real node's kubeconfig as its `KUBECONFIG`.
fn user_python(dir: &Path) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path =
        std::env::join_paths([root.join("python"), Path::new(EXAMPLES).join("gaussian")]).unwrap();
    // `python` on its PATH is the venv's, as in an activated venv.
    let venv_bin = python().parent().unwrap().to_path_buf();
    let paths = std::env::var_os("PATH").unwrap_or_default();
    let paths =
        std::env::join_paths(std::iter::once(venv_bin).chain(std::env::split_paths(&paths)))
            .unwrap();
    let mut cmd = Command::new(python());
    cmd.current_dir(dir)
        .env("PATH", paths)
        .env("PYTHONPATH", path)
        .env("KUBECONFIG", NODE.kubeconfig())
        .env("ABC_RESULTS_DIR", dir)
        .env("MPLCONFIGDIR", dir.join("matplotlib"))
        .env("PYTHONUNBUFFERED", "1")
        .env("GAUSSIAN_GENERATIONS", "3")
        .env_remove("ABC_REDIS_HOST")
        .env_remove("ABC_REDIS_PORT")
        .env_remove("ABC_REDIS_PASSWORD");
    cmd
}

/// The notebook script against run `run` in `ns`, with `env`.
fn notebook(ns: &str, run: &str, env: &[(&str, &str)], dir: &Path) -> Proc {
    let mut cmd = user_python(dir);
    cmd.args(["-c", NOTEBOOK])
        .env("CONNECT_RUN", run)
        .env("CONNECT_NAMESPACE", ns);
    for (key, value) in env {
        cmd.env(key, value);
    }
    Proc::spawn("notebook", cmd, dir)
}

/// Waits for the master's end; asserts it succeeded with a posterior near the observed 2.0
/// and every generation complete; returns its output.
fn completed(master: &mut Proc) -> String {
    let status = master.wait(Duration::from_secs(600));
    let log = master.log();
    assert!(status.success(), "the master failed ({status}):\n{log}");
    let mean = posterior_mean(&log);
    assert!(
        (1.5..2.5).contains(&mean),
        "posterior mean {mean} is far from the observed 2.0:\n{log}"
    );
    assert_every_generation_complete_in(&log);
    log
}

/// What the script printed after `prefix` on its line.
fn printed<'a>(log: &'a str, prefix: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{log}"))
}

/// A notebook on this machine drives a full analysis through `connect` against an AbcRun
/// without master (examples/no-master, applied as the example says) whose workers are real
/// pods: to the posterior, every generation complete, the operator reading the progress from
/// the same Redis, the workers' versions read from a worker's own Python and found equal, and
/// the run left in place (connect did not create it). Then the example's laptop path, as
/// written: `python -m abc_operator.connect no-master -- python gaussian.py`, on the same run.
#[tokio::test]
async fn a_notebook_on_this_machine_samples_through_connect_with_the_runs_real_workers() {
    install_operator();
    let client = NODE.client().await;
    let ns = TestNamespace::on(NODE, &client, "e2e-connect").await;
    apply_example(&ns.name, "no-master/abcrun.yaml", |doc| {
        doc["spec"]["workers"]["replicas"] = 2.into();
    });
    let dir = tempfile::tempdir().unwrap();
    let mut master = notebook(&ns.name, "no-master", &[], dir.path());
    let log = completed(&mut master);
    assert!(
        log.contains("connected: <abc_operator.connect.Connection AbcRun")
            && log.contains("Redis at 127.0.0.1:"),
        "{log}"
    );
    let versions: serde_json::Value =
        serde_json::from_str(printed(&log, "worker versions: ")).unwrap();
    assert_eq!(
        versions["pyabc"], "0.13.0",
        "a worker's versions were read: {log}"
    );
    assert!(
        log.contains("abc_operator.connect: the workers (pod no-master-workers-")
            && log.contains("have this Python's versions")
            && !log.contains("VersionMismatchWarning"),
        "the image's versions are this Python's: {log}"
    );
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        120,
        "the operator's status showing a generation",
        || async {
            let run = runs.get("no-master").await.ok()?;
            run.status?.progress?.generation.filter(|t| *t >= 1)
        },
    )
    .await;
    let start = runs
        .get("no-master")
        .await
        .unwrap()
        .status
        .unwrap()
        .last_master_start;
    assert_eq!(
        start.and_then(|s| s.module_version).as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "the status reports the notebook's module, the operator's version"
    );
    let differs = events_with_reason(&client, &ns.name, "ModuleVersionDiffers").await;
    assert!(
        differs.is_empty(),
        "a module of the same version: {differs:#?}"
    );
    assert!(
        !log.contains("deleted AbcRun"),
        "a run connect did not create is kept: {log}"
    );
    wait_for_phase(&runs, "no-master", "Running", 10).await;

    // The laptop path of examples/no-master/abcrun.yaml, an unchanged master script.
    let mut cmd = user_python(dir.path());
    cmd.args(["-m", "abc_operator.connect", "no-master", "-n", &ns.name])
        .args(["--", "python"])
        .arg(Path::new(EXAMPLES).join("gaussian/gaussian.py"))
        .env("GAUSSIAN_GENERATIONS", "2");
    let mut laptop = Proc::spawn("laptop", cmd, dir.path());
    let log = completed(&mut laptop);
    assert_eq!(
        super::summary(&log).len(),
        2,
        "the laptop's analysis is its own, 2 generations: {log}"
    );
}

/// `connect(..., create=spec)` creates the AbcRun from Python (its workers real pods), the
/// analysis runs to its posterior, and leaving the `with` block deletes the run and with it
/// everything it owned.
#[tokio::test]
async fn a_run_created_from_python_samples_and_is_deleted_when_the_notebook_is_done() {
    install_operator();
    let client = NODE.client().await;
    let ns = TestNamespace::on(NODE, &client, "e2e-connect-create").await;
    let spec = serde_json::json!({
        "image": "abc-example-gaussian:0.1.0",
        "workers": {"replicas": 2, "runtime": "10m"},
    });
    let dir = tempfile::tempdir().unwrap();
    let spec = spec.to_string();
    let mut master = notebook(
        &ns.name,
        "from-python",
        &[("CONNECT_CREATE", spec.as_str())],
        dir.path(),
    );
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    let created = eventually(180, "the AbcRun created by the notebook", || async {
        runs.get("from-python").await.ok()
    })
    .await;
    assert_eq!(created.spec.image, "abc-example-gaussian:0.1.0");
    assert_eq!(created.spec.workers.replicas, 2);
    assert_eq!(
        created.spec.idle_timeout_seconds,
        Some(3600),
        "a created run stops by itself when left"
    );
    let log = completed(&mut master);
    assert!(
        log.contains(&format!(
            "abc_operator.connect: created AbcRun {}/from-python",
            ns.name
        )) && log.contains(&format!(
            "abc_operator.connect: deleted AbcRun {}/from-python",
            ns.name
        )),
        "{log}"
    );
    assert!(
        runs.get_opt("from-python").await.unwrap().is_none(),
        "the run is gone once the notebook is done"
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    eventually(180, "the run's pods gone with it", || async {
        let left = pods
            .list(&ListParams::default().labels("abc-operator.dev/run=from-python"))
            .await
            .ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
}

/// Every forwarded stream is broken while generation 2 is being sampled (each at its next
/// command, so that no answer of Redis is lost on the way: see connect.py's docs): the master's
/// Redis client connects again, each new connection gets a new stream through the API server,
/// and the analysis completes with every generation complete. The notebook's module says it is
/// of another release: the operator says so, once, in a Warning naming both versions.
#[tokio::test]
async fn streams_broken_inside_a_generation_cost_the_analysis_nothing() {
    install_operator();
    let client = NODE.client().await;
    let ns = TestNamespace::on(NODE, &client, "e2e-connect-drop").await;
    apply_example(&ns.name, "no-master/abcrun.yaml", |doc| {
        doc["spec"]["workers"]["replicas"] = 2.into();
        // A few seconds per generation: room to break the streams inside generation 2.
        slow_model(doc, "0.02");
    });
    let dir = tempfile::tempdir().unwrap();
    let mut master = notebook(
        &ns.name,
        "no-master",
        &[
            ("CONNECT_DROP_IN_GENERATION", "2"),
            ("CONNECT_MODULE_VERSION", "0.0.9"),
        ],
        dir.path(),
    );
    let log = completed(&mut master);
    let differs = events_published(&client, &ns.name, "ModuleVersionDiffers", 1).await;
    assert!(
        differs.len() == 1
            && differs[0].note.as_deref().is_some_and(|n| {
                n.contains("module is version 0.0.9")
                    && n.contains(&format!(
                        "pip install abc-operator=={}",
                        env!("CARGO_PKG_VERSION")
                    ))
            }),
        "one Warning naming the notebook's module version: {differs:#?}"
    );
    let dropped = printed(&log, "dropped ");
    let live: u32 = dropped
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    let renewed: u32 = dropped
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        live >= 1 && dropped.contains("inside generation 2: True") && renewed >= 1,
        "the master's streams were broken inside generation 2 and it connected again: {log}"
    );
    let generations = super::summary(&log);
    assert_eq!(generations.len(), 3, "all 3 generations: {log}");
    assert!(
        !kubectl(&["get", "abcrun", "no-master", "-n", &ns.name]).is_empty(),
        "the run is kept"
    );
}

/// What `connect` says to a user who may not do all it needs, as a ServiceAccount's token in
/// a kubeconfig of its own finds it: a run that does not exist (named, with the namespace and
/// context), then each right it lacks, named with its verb and resource as the API server
/// refused it, until it has them all but `pods/exec`, without which it connects and only says
/// it could not compare versions.
#[tokio::test]
async fn connect_names_what_a_user_lacks() {
    install_operator();
    let client = NODE.client().await;
    let ns = TestNamespace::on(NODE, &client, "e2e-connect-rights").await;
    apply_example(&ns.name, "no-master/abcrun.yaml", |doc| {
        doc["spec"]["workers"]["replicas"] = 1.into();
    });
    kubectl(&["create", "serviceaccount", "analyst", "-n", &ns.name]);
    let token = kubectl(&[
        "create",
        "token",
        "analyst",
        "-n",
        &ns.name,
        "--duration=30m",
    ]);
    let admin: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(NODE.kubeconfig()).unwrap()).unwrap();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "node", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "analyst", "user": {"token": token.trim()}}],
        "contexts": [{"name": "analyst", "context": {
            "cluster": "node", "user": "analyst", "namespace": ns.name,
        }}],
        "current-context": "analyst",
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig_path = dir.path().join("analyst.kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig.to_string()).unwrap();
    let grant = |rules: &[(&str, &str, &str)]| {
        let rules: Vec<_> = rules
            .iter()
            .map(|(group, resource, verb)| {
                serde_json::json!({"apiGroups": [group], "resources": [resource], "verbs": [verb]})
            })
            .collect();
        let role = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "analyst", "namespace": ns.name}, "rules": rules,
        });
        super::kubectl_stdin(&["apply", "-f", "-"], &role.to_string());
    };
    kubectl(&[
        "create",
        "rolebinding",
        "analyst",
        "-n",
        &ns.name,
        "--role=analyst",
        &format!("--serviceaccount={}:analyst", ns.name),
    ]);
    let try_connect = |run: &str| {
        let script = "import sys, time, abc_operator\n\
            try:\n    run = abc_operator.connect(sys.argv[1], timeout=120)\n\
            except abc_operator.connect.ConnectError as err:\n    print('ConnectError:', err)\n\
            else:\n    time.sleep(15)\n    print('connected, streams:', run.streams_opened)\n    run.close()\n";
        let mut cmd = user_python(dir.path());
        cmd.env("KUBECONFIG", &kubeconfig_path)
            .args(["-c", script, run]);
        let mut proc = Proc::spawn("analyst", cmd, dir.path());
        let status = proc.wait(Duration::from_secs(180));
        let log = proc.log();
        assert!(status.success(), "{log}");
        log
    };
    let runs = ("abc-operator.dev", "abcruns", "get");
    let pods = ("", "pods", "list");
    let secrets = ("", "secrets", "get");
    let forward_get = ("", "pods/portforward", "get");
    let forward_create = ("", "pods/portforward", "create");
    grant(&[runs, pods]);
    // The workers' pod runs before the last step, so that the version check meets it.
    eventually(180, "the run's worker pod ready", || async {
        let out = NODE
            .kubectl()
            .args(["wait", "-n", &ns.name, "--for=condition=Ready", "pod"])
            .args([
                "-l",
                "abc-operator.dev/run=no-master,abc-operator.dev/component=worker",
            ])
            .arg("--timeout=5s")
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;

    let said = try_connect("no-such-run");
    assert!(
        said.contains(&format!(
            "ConnectError: no AbcRun 'no-such-run' in namespace '{}', context 'analyst'",
            ns.name
        )),
        "{said}"
    );
    let said = try_connect("no-master");
    assert!(
        said.contains(&format!(
            "ConnectError: you may not get secrets in namespace '{}', context 'analyst' (needed \
             for Secret 'no-master-redis-password' (the Redis password))",
            ns.name
        )),
        "{said}"
    );
    grant(&[runs, pods, secrets]);
    // The websocket's upgrade is a GET, which the API server authorizes as `get`, and then
    // also as `create` (what `kubectl port-forward`'s POST needs alone).
    let said = try_connect("no-master");
    assert!(
        said.contains("ConnectError: you may not get pods/portforward in namespace")
            && said.contains("ask for `get` on `pods/portforward` there")
            && said.contains("(needed for the Redis pod 'no-master-redis-"),
        "{said}"
    );
    grant(&[runs, pods, secrets, forward_get]);
    let said = try_connect("no-master");
    assert!(
        said.contains("ConnectError: you may not create pods/portforward in namespace"),
        "{said}"
    );
    grant(&[runs, pods, secrets, forward_get, forward_create]);
    let said = try_connect("no-master");
    assert!(
        said.contains("connected, streams: 1")
            && said.contains(
                "could not compare this Python's versions with the workers': you may not get \
                 pods/exec"
            ),
        "{said}"
    );
}
