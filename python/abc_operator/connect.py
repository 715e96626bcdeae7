"""abc_operator.connect: a pyABC master anywhere (a laptop, a notebook) for an AbcRun on a
Kubernetes cluster, in one call.

    import abc_operator, pyabc

    with abc_operator.connect("no-master", namespace="abc") as run:
        abc = pyabc.ABCSMC(model, prior, distance, sampler=run.sampler())
        history = abc_operator.run(abc, "model.db", observed, max_nr_populations=6)

`connect(name)` reads the AbcRun with your kubeconfig (the official `kubernetes` client:
`pip install './python[connect]'`), reads the Redis password from the run's Secret and
forwards a local port (127.0.0.1, a free one) to the run's Redis pod through the API server,
as `kubectl port-forward` does: every connection made to it gets its own forwarded stream, so
a stream that breaks costs only its connection, and the next one (redis-py reconnects) gets a
new stream, to the Redis pod of the moment. An external Redis (`spec.redis.external`) is
reached directly, at its host and port.

`connect(name, create={...})` first creates the AbcRun with that `spec` (as in its YAML:
`{"image": "...", "workers": {"replicas": 4}}`), and deletes it when the connection is
closed (the end of the `with` block), as Dask's `KubeCluster` does; a run that already
exists is used as it is, and kept.

A shell can run an unchanged master script (one that calls `abc_operator.sampler()`, which
reads `ABC_REDIS_HOST`, `ABC_REDIS_PORT`, `ABC_REDIS_PASSWORD`) the same way:

    python -m abc_operator.connect no-master -- python gaussian.py

The master pickles the model with cloudpickle and the workers unpickle it: Python (major and
minor), cloudpickle and pyabc must be the same here and in the workers' image. Once a worker
pod runs, `connect` asks its Python (through `pods/exec`) and warns (`VersionMismatchWarning`)
when they differ, or says why it could not compare.

What a forwarded connection cannot do: a connection that breaks while Redis' answer to the
master's BLPOP is on its way loses that result (Redis popped it), and pyABC's master then
waits for it for ever, as with `kubectl port-forward` or any other connection (measured on
the real node: streams closed at once inside a generation hung 2 analyses of 5; broken between
commands, as the real-node tests break them, none of 3). Interrupting it (Ctrl-C) ends the
analysis as pyABC ends any, its stored generations kept and the run marked done.

This module is part of the installed package only (the operator ships `abc_operator`'s
`__init__.py` alone to the masters it runs), and imports `kubernetes` only when it talks to
the cluster.
"""

import argparse
import ast
import base64
import importlib.metadata
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import types
import warnings

import abc_operator

__all__ = ["Connection", "ConnectError", "VersionMismatchWarning", "connect", "main"]

GROUP = "abc-operator.dev"
VERSION = "v1alpha1"
PLURAL = "abcruns"
# The labels of a run's pods and the port of its managed Redis (src/api.rs: RUN_LABEL,
# COMPONENT_LABEL; src/resources/mod.rs: Component, REDIS_PORT).
RUN_LABEL = "abc-operator.dev/run"
COMPONENT_LABEL = "abc-operator.dev/component"
REDIS_PORT = 6379
# The workers' container (src/resources/workers.rs), where the version check runs `python`,
# the interpreter the workers run.
WORKER_CONTAINER = "worker"
# How long `connect` waits, by default, for the run's Secret and Redis to be ready, and a
# forwarded connection for the Redis pod to come back.
DEFAULT_TIMEOUT_SECONDS = 300
# A run `connect` creates stops by itself after this long without an analysis (unless its
# spec says otherwise), so that one whose Python died without closing gives its workers back.
CREATED_IDLE_TIMEOUT_SECONDS = 3600
# How long closing waits for a run it created to be gone.
DELETE_WAIT_SECONDS = 60
PROGRESS_EVERY_SECONDS = 15
FINISHED_PHASES = ("Succeeded", "Failed", "Stopped")
# What the version check compares, and how it reads them in a worker's Python.
VERSION_PACKAGES = ("pyabc", "cloudpickle")
VERSIONS_MARK = "abc-operator-versions:"
VERSIONS_SCRIPT = (
    "import importlib.metadata as m, json, sys\n"
    "def v(p):\n"
    "    try:\n"
    "        return m.version(p)\n"
    "    except m.PackageNotFoundError:\n"
    "        return None\n"
    f"print({VERSIONS_MARK!r} + json.dumps({{'python': list(sys.version_info[:3]), "
    f"**{{p: v(p) for p in {VERSION_PACKAGES!r}}}}}))\n"
)


class ConnectError(RuntimeError):
    """What `connect` could not do, and what to do about it."""


class VersionMismatchWarning(UserWarning):
    """This Python's versions differ from the workers': pickled models may not load there."""


def connect(
    name,
    *,
    namespace=None,
    context=None,
    kubeconfig=None,
    create=None,
    delete_on_close=None,
    timeout=DEFAULT_TIMEOUT_SECONDS,
    check_versions=True,
):
    """Connects to the Redis of AbcRun `name` and returns a `Connection` (a context manager;
    `.sampler()` is pyABC's Redis sampler for it, `.close()` ends it).

    `namespace`: the run's (default: the kubeconfig context's, else "default"). `context`,
    `kubeconfig`: which cluster and credentials (default: the current context of `$KUBECONFIG`
    or ~/.kube/config; inside a pod without a kubeconfig, its service account).
    `create`: the AbcRun's `spec` (a dict as in its YAML): create the run first (without
    `master`: this Python is its master); an existing run is used as it is.
    `delete_on_close`: delete the run when the connection closes (default: only if `create`
    made it). `timeout`: seconds to wait for the run's Redis to be ready (and, later, for a
    Redis pod to come back). `check_versions`: compare this Python's versions with a worker's
    once one runs (needs `get` and `create` on `pods/exec`)."""
    cluster = _Cluster(kubeconfig, context, namespace)
    connection = Connection(cluster, name)
    try:
        connection._open(create, delete_on_close, timeout, check_versions)
    except BaseException:
        connection.close()
        raise
    return connection


class Connection:
    """A live connection to an AbcRun's Redis: `sampler()`, `environ()`, `address`,
    `password`; `close()` (or the end of a `with` block) stops forwarding and deletes the run
    if `connect` created it (or `delete_on_close` was set)."""

    def __init__(self, cluster, name):
        self.name = name
        self.namespace = cluster.namespace
        self.context = cluster.context
        self.address = None
        self.password = None
        self.created = False
        self.delete_on_close = False
        self.worker_versions = None
        self._cluster = cluster
        self._forwarder = None
        self._closed = threading.Event()
        self._atexit = None

    def __repr__(self):
        where = f"{self.address[0]}:{self.address[1]}" if self.address else "not connected"
        return f"<abc_operator.connect.Connection AbcRun {self._run_name()}, Redis at {where}>"

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def sampler(self, kind="dynamic", **kwargs):
        """pyABC's Redis sampler for the run's Redis, as `abc_operator.sampler` makes it:
        `kind` "dynamic" (RedisEvalParallelSampler), "look-ahead" or "static"; other keyword
        arguments go to the sampler (e.g. batch_size)."""
        self._check_open()
        host, port = self.address
        return abc_operator.sampler(kind, host=host, port=port, password=self.password, **kwargs)

    def environ(self):
        """The variables `abc_operator.sampler()` reads, for this connection (e.g. for
        `os.environ.update(...)` before running a master script in this Python, or a child
        process' environment)."""
        self._check_open()
        return {
            "ABC_REDIS_HOST": self.address[0],
            "ABC_REDIS_PORT": str(self.address[1]),
            "ABC_REDIS_PASSWORD": self.password or "",
        }

    @property
    def streams_opened(self):
        """How many forwarded streams were opened so far (one per Redis connection made)."""
        return self._forwarder.opened if self._forwarder else 0

    def close(self):
        """Stops forwarding (open Redis connections break) and deletes the run if it is to
        be deleted. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._atexit is not None:
            import atexit

            atexit.unregister(self._atexit)
        if self._forwarder is not None:
            self._forwarder.close()
        if self.delete_on_close:
            self._cluster.delete_run(self.name)

    def _drop_streams(self):
        """Breaks every live forwarded stream at its next command (the command never reaches
        Redis, so no answer is lost), as a stream the API server drops breaks it; returns how
        many streams are live. For tests of the forwarding."""
        return self._forwarder.drop_all() if self._forwarder else 0

    def _check_open(self):
        if self._closed.is_set():
            raise ConnectError(f"the connection to AbcRun {self._run_name()} is closed")

    def _run_name(self):
        return f"{self.namespace}/{self.name}"

    def _open(self, create, delete_on_close, timeout, check_versions):
        cluster = self._cluster
        if create is not None:
            self.created = cluster.create_run(self.name, create)
        self.delete_on_close = self.created if delete_on_close is None else bool(delete_on_close)
        if self.delete_on_close:
            import atexit

            self._atexit = self.close
            atexit.register(self._atexit)
        run = cluster.read_run(self.name)
        if (run.get("spec") or {}).get("master"):
            raise ConnectError(
                f"AbcRun {self._run_name()} runs its own master (spec.master): a second master "
                "on its Redis would take its workers' work from it. Connect to a run without "
                "spec.master (examples/no-master/abcrun.yaml), or create one with create="
            )
        deadline = time.monotonic() + timeout
        progress = _Progress(f"AbcRun {self._run_name()}", timeout)
        self.password = cluster.wait_for_password(self.name, run, deadline, progress)
        external = ((run.get("spec") or {}).get("redis") or {}).get("external")
        if external:
            self.address = (external["host"], int(external.get("port", REDIS_PORT)))
        else:
            self._forwarder = _Forwarder(
                lambda: cluster.open_redis_stream(self.name), timeout, progress.say
            )
            self.address = self._forwarder.address
        self._wait_for_redis(deadline, progress, external)
        if check_versions:
            threading.Thread(
                target=self._check_versions, name="abc-operator versions", daemon=True
            ).start()

    def _wait_for_redis(self, deadline, progress, external):
        import redis

        while True:
            self._check_open()
            run = self._cluster.read_run(self.name)
            phase = (run.get("status") or {}).get("phase")
            if phase in FINISHED_PHASES:
                raise ConnectError(
                    f"AbcRun {self._run_name()} is {phase}: its workers and Redis were given "
                    "back. Create a new AbcRun to sample again (delete this one, or use "
                    "another name)"
                )
            if not external:
                waiting = self._cluster.redis_pod_state(self.name)
                if waiting is not None:
                    progress.wait(deadline, waiting)
                    continue
            client = redis.Redis(
                host=self.address[0], port=self.address[1], password=self.password,
                socket_connect_timeout=10, socket_timeout=30, retry=None,
            )
            try:
                client.ping()
                return
            except redis.exceptions.AuthenticationError as err:
                secret, key = password_secret(self.name, run)
                raise ConnectError(
                    f"the Redis of AbcRun {self._run_name()} refused the password in Secret "
                    f"{secret!r} (key {key!r}): {err}. Is it the Secret its Redis uses?"
                ) from None
            except redis.exceptions.RedisError as err:
                failure = self._forwarder.failure if self._forwarder else None
                if failure is not None:
                    raise failure from None
                where = (
                    f"the external Redis at {self.address[0]}:{self.address[1]} (reached "
                    "directly: it must be reachable from this machine)"
                    if external else "Redis through the forwarded port"
                )
                progress.wait(deadline, f"{where} does not answer yet ({err})")
            finally:
                client.close()

    def _check_versions(self):
        """Warns when the workers' Python, pyabc or cloudpickle differ from this Python's,
        once a worker pod runs (or says why it could not compare)."""
        try:
            found = self._cluster.worker_versions(self.name, self._closed)
        except ConnectError as err:
            _say(f"could not compare this Python's versions with the workers': {err}")
            return
        if found is None:
            return
        pod, workers = found
        self.worker_versions = workers
        here = local_versions()
        differences = version_differences(here, workers)
        if differences:
            warnings.warn(
                f"the workers of AbcRun {self._run_name()} (pod {pod}) differ from this "
                f"Python: {'; '.join(differences)}. The master pickles the model with "
                "cloudpickle and the workers unpickle it, which needs the same Python "
                "(major.minor), cloudpickle and pyabc: use the image's versions here, or an "
                "image with yours",
                VersionMismatchWarning,
                stacklevel=1,
            )
        else:
            _say(f"the workers (pod {pod}) have this Python's versions: {describe(here)}")


def local_versions():
    """This Python's version (major, minor, micro) and those of `VERSION_PACKAGES`."""
    versions = {"python": list(sys.version_info[:3])}
    for package in VERSION_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def version_differences(here, workers):
    """What differs between two `local_versions()` that matters to a pickled model: Python's
    major.minor, and each package's version; one phrase each."""
    differences = []
    if list(here["python"][:2]) != list(workers["python"][:2]):
        differences.append(
            f"Python {_python(here)} here, {_python(workers)} in the workers"
        )
    for package in VERSION_PACKAGES:
        if here.get(package) != workers.get(package):
            differences.append(
                f"{package} {here.get(package) or 'missing'} here, "
                f"{workers.get(package) or 'missing'} in the workers"
            )
    return differences


def describe(versions):
    return ", ".join(
        [f"Python {_python(versions)}"]
        + [f"{p} {versions.get(p) or 'missing'}" for p in VERSION_PACKAGES]
    )


def _python(versions):
    return ".".join(str(part) for part in versions["python"][:3])


def password_secret(name, run):
    """(Secret, key) of the run's Redis password, as the operator decides it
    (src/resources/secret.rs: password_secret_ref): the external Redis' `passwordSecret`, the
    managed Redis' `passwordSecret`, else the generated `{name}-redis-password`."""
    redis = (run.get("spec") or {}).get("redis") or {}
    own = (redis.get("external") or {}).get("passwordSecret") or (
        redis.get("managed") or {}
    ).get("passwordSecret")
    if own:
        return own["name"], own.get("key") or "password"
    return f"{name}-redis-password", "password"


def new_run(name, namespace, spec):
    """The AbcRun `create=spec` makes: this Python is its master (no `spec.master`), and it
    stops by itself after `CREATED_IDLE_TIMEOUT_SECONDS` without an analysis unless the spec
    says otherwise."""
    if not isinstance(spec, dict):
        raise ConnectError(
            f"create= takes the AbcRun's spec as a dict (as in its YAML), not {type(spec).__name__}"
        )
    if "master" in spec:
        raise ConnectError(
            "create= makes a run whose master is this Python: leave spec.master out"
        )
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AbcRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"idleTimeoutSeconds": CREATED_IDLE_TIMEOUT_SECONDS, **spec},
    }


def _kubernetes():
    """The `kubernetes` package, or an ImportError saying how to install it."""
    try:
        import kubernetes  # noqa: F401
        import kubernetes.client
        import kubernetes.config
        import kubernetes.stream
    except ImportError as err:
        raise ImportError(
            "abc_operator.connect needs the Kubernetes client: pip install "
            "'abc-operator[connect]' (from abc-operator's repository: pip install "
            f"'./python[connect]'); {err}"
        ) from err
    return kubernetes


class _Cluster:
    """The cluster as `connect` uses it: the API calls, and what their failures mean."""

    def __init__(self, kubeconfig, context, namespace):
        kubernetes = _kubernetes()
        config = kubernetes.config
        self.configuration = kubernetes.client.Configuration()
        try:
            try:
                config.load_kube_config(
                    config_file=kubeconfig, context=context,
                    client_configuration=self.configuration,
                )
            except config.ConfigException:
                # A notebook in a pod of the cluster, without a kubeconfig: its service account.
                if kubeconfig or context or "KUBERNETES_SERVICE_HOST" not in os.environ:
                    raise
                config.load_incluster_config(client_configuration=self.configuration)
                self.context = None
                default_namespace = _in_cluster_namespace()
            else:
                contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
                chosen = next((c for c in contexts if c["name"] == context), current) \
                    if context else current
                self.context = chosen["name"]
                default_namespace = (chosen.get("context") or {}).get("namespace")
        except config.ConfigException as err:
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ConnectError(
                f"cannot use the kubeconfig ({where}"
                f"{f', context {context!r}' if context else ''}): {str(err).rstrip('.')}. "
                "Pass kubeconfig= "
                "and context= of the cluster the run is on (`kubectl config get-contexts` "
                "lists them)"
            ) from None
        self.namespace = namespace or default_namespace or "default"
        self.client = kubernetes.client.ApiClient(self.configuration)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.api_exception = kubernetes.client.ApiException

    def where(self):
        context = f", context {self.context!r}" if self.context else ""
        return f"namespace {self.namespace!r}{context}"

    def read_run(self, name):
        try:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except self.api_exception as err:
            if err.status == 404:
                if not self._abcruns_exist():
                    raise ConnectError(
                        f"this cluster ({self.where()}) has no AbcRun resource: is "
                        "abc-operator installed (helm install abc-operator "
                        "charts/abc-operator)? Or pass the context= of its cluster"
                    ) from None
                raise ConnectError(
                    f"no AbcRun {name!r} in {self.where()}: `kubectl get abcruns "
                    f"-n {self.namespace}` lists them; pass namespace= or context=, or "
                    "create= to create it"
                ) from None
            raise self._failure(err, "get", "abcruns.abc-operator.dev", f"AbcRun {name!r}")

    def _abcruns_exist(self):
        try:
            self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, limit=1
            )
            return True
        except self.api_exception as err:
            return err.status != 404

    def create_run(self, name, spec):
        """Creates the run; False if it exists already (it is used as it is)."""
        body = new_run(name, self.namespace, spec)
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body
            )
        except self.api_exception as err:
            if err.status == 409:
                _say(
                    f"AbcRun {self.namespace}/{name} exists already: using it as it is "
                    "(its spec is not compared with create=), and keeping it at the end"
                )
                return False
            if err.status == 404 and not self._abcruns_exist():
                raise ConnectError(
                    f"this cluster ({self.where()}) has no AbcRun resource: is abc-operator "
                    "installed?"
                ) from None
            raise self._failure(err, "create", "abcruns.abc-operator.dev", f"AbcRun {name!r}")
        _say(f"created AbcRun {self.namespace}/{name}; it is deleted when this connection closes")
        return True

    def delete_run(self, name):
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except self.api_exception as err:
            if err.status != 404:
                _say(f"could not delete AbcRun {self.namespace}/{name}: {_reason(err)}")
            return
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name
                )
            except self.api_exception as err:
                if err.status == 404:
                    _say(f"deleted AbcRun {self.namespace}/{name} (and its workers and Redis)")
                    return
            time.sleep(1)
        _say(f"asked to delete AbcRun {self.namespace}/{name}; it was still there after "
             f"{DELETE_WAIT_SECONDS} s")

    def wait_for_password(self, name, run, deadline, progress):
        """The Redis password from the run's Secret (the operator writes the generated one
        right after the run is created: waits for it)."""
        secret, key = password_secret(name, run)
        while True:
            try:
                found = self.core.read_namespaced_secret(secret, self.namespace)
            except self.api_exception as err:
                if err.status == 404:
                    progress.wait(deadline, f"no Secret {secret!r} with the Redis password yet")
                    continue
                raise self._failure(
                    err, "get", "secrets", f"Secret {secret!r} (the Redis password)"
                )
            data = found.data or {}
            if key in data:
                return base64.b64decode(data[key]).decode()
            progress.wait(deadline, f"Secret {secret!r} has no key {key!r} yet")

    def _redis_pods(self, name):
        selector = f"{RUN_LABEL}={name},{COMPONENT_LABEL}=redis"
        try:
            return self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        except self.api_exception as err:
            raise self._failure(err, "list", "pods", f"the Redis pod of AbcRun {name!r}")

    def ready_redis_pod(self, name):
        """The name of a ready Redis pod of the run, or None."""
        for pod in self._redis_pods(name):
            if pod.metadata.deletion_timestamp is None and _ready(pod):
                return pod.metadata.name
        return None

    def redis_pod_state(self, name):
        """None when a Redis pod of the run is ready, else what it waits for (one phrase)."""
        pods = [p for p in self._redis_pods(name) if p.metadata.deletion_timestamp is None]
        if any(_ready(p) for p in pods):
            return None
        if not pods:
            return "no Redis pod yet"
        return "; ".join(f"Redis pod {p.metadata.name}: {_pod_state(p)}" for p in pods)

    def open_redis_stream(self, name):
        """A forwarded stream to the run's ready Redis pod, or raises `_NotReady` (wait) or
        `ConnectError` (give up)."""
        pod = self.ready_redis_pod(name)
        if pod is None:
            raise _NotReady(self.redis_pod_state(name) or "the Redis pod is not ready")
        kubernetes = _kubernetes()
        # A client of its own: `kubernetes.stream` swaps the client's request method for the
        # time of the call, which would send another thread's call through a websocket.
        with kubernetes.client.ApiClient(self.configuration) as client:
            core = kubernetes.client.CoreV1Api(client)
            try:
                forward = kubernetes.stream.portforward(
                    core.connect_get_namespaced_pod_portforward, pod, self.namespace,
                    ports=str(REDIS_PORT),
                )
            except self.api_exception as err:
                if _status(err) == 403:
                    raise self._failure(
                        err, "create", "pods/portforward", f"the Redis pod {pod!r}",
                        status=403,
                    ) from None
                if _status(err) == 404:
                    raise _NotReady(f"the Redis pod {pod} is gone") from None
                raise _NotReady(f"cannot forward to the Redis pod {pod}: {_reason(err)}") from None
        return _Stream(forward, pod)

    def worker_versions(self, name, closed):
        """(pod, versions) of a running worker of the run, read by its own Python; waits
        for one until `closed` is set (then None)."""
        kubernetes = _kubernetes()
        selector = f"{RUN_LABEL}={name},{COMPONENT_LABEL}=worker"
        while not closed.is_set():
            try:
                pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
            except self.api_exception as err:
                raise self._failure(err, "list", "pods", f"the workers of AbcRun {name!r}")
            running = [
                p.metadata.name for p in pods.items
                if p.metadata.deletion_timestamp is None and _container_running(p)
            ]
            if not running:
                closed.wait(5)
                continue
            pod = running[0]
            with kubernetes.client.ApiClient(self.configuration) as client:
                core = kubernetes.client.CoreV1Api(client)
                try:
                    out = kubernetes.stream.stream(
                        core.connect_get_namespaced_pod_exec, pod, self.namespace,
                        container=WORKER_CONTAINER,
                        command=["python", "-c", VERSIONS_SCRIPT],
                        stderr=True, stdin=False, stdout=True, tty=False,
                    )
                except self.api_exception as err:
                    if _status(err) == 403:
                        raise self._failure(
                            err, "create", "pods/exec", f"worker pod {pod!r}", status=403
                        ) from None
                    closed.wait(5)  # the pod went away meanwhile
                    continue
            for line in str(out).splitlines():
                if line.startswith(VERSIONS_MARK):
                    return pod, json.loads(line[len(VERSIONS_MARK):])
            raise ConnectError(f"the worker pod {pod}'s python printed no versions: {out!r}")
        return None

    def _failure(self, err, verb, resource, what, status=None):
        status = status or err.status
        if status == 403:
            # The API server names what it refused (`cannot get resource "pods/portforward"`):
            # that, rather than what this module expected to be refused.
            refused = re.search(
                r'cannot (\w+) resource "([^"]+)" in API group "([^"]*)"', _reason(err)
            )
            if refused:
                verb, resource, group = refused.groups()
                resource = f"{resource}.{group}" if group else resource
            return ConnectError(
                f"you may not {verb} {resource} in {self.where()} (needed for {what}): "
                f"ask for `{verb}` on `{resource}` there (`kubectl auth can-i {verb} "
                f"{resource} -n {self.namespace}` says no). The API server said: "
                f"{_reason(err)}"
            )
        if status == 401:
            return ConnectError(
                f"the cluster refused your credentials ({self.where()}): log in again "
                f"(they may have expired). The API server said: {_reason(err)}"
            )
        return ConnectError(f"cannot {verb} {resource} ({what}) in {self.where()}: {_reason(err)}")


def _status(err):
    """The HTTP status of an ApiException; a websocket's refused handshake (`status` 0)
    names it in its reason."""
    if err.status:
        return err.status
    reason = str(err.reason or "")
    for code in (401, 403, 404):
        if f"Handshake status {code}" in reason:
            return code
    return 0


def _reason(err):
    """The API server's message of an ApiException, else its reason. A refused websocket
    (`status` 0) carries the server's answer at the end of its reason: `Handshake status 403
    Forbidden -+-+- {headers} -+-+- b'{...}'`."""
    body = err.body
    if not body and "-+-+-" in str(err.reason or ""):
        body = str(err.reason).rsplit("-+-+-", 1)[1].strip()
        try:
            body = ast.literal_eval(body).decode()  # the repr of the answer's bytes
        except (ValueError, SyntaxError, AttributeError, UnicodeDecodeError):
            pass
    try:
        message = json.loads(body or "").get("message")
    except (ValueError, AttributeError, TypeError):
        message = None
    return message or str(err.reason or err).strip()


def _ready(pod):
    conditions = (pod.status and pod.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _container_running(pod):
    statuses = (pod.status and pod.status.container_statuses) or []
    return any(s.name == WORKER_CONTAINER and s.state and s.state.running for s in statuses)


def _pod_state(pod):
    """What a pod that is not ready is doing: a waiting container's reason and message, else
    its phase."""
    statuses = (pod.status and pod.status.container_statuses) or []
    for status in statuses:
        waiting = status.state and status.state.waiting
        if waiting and waiting.reason:
            return waiting.reason + (f" ({waiting.message})" if waiting.message else "")
    phase = (pod.status and pod.status.phase) or "Pending"
    return f"{phase}, not ready yet"


def _in_cluster_namespace():
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as file:
            return file.read().strip() or None
    except OSError:
        return None


class _NotReady(Exception):
    """The Redis pod cannot be reached yet (the message says why); worth waiting for."""


class _Stream:
    """A forwarded stream: a socket-like end (`sock`) the Kubernetes client pipes to the
    pod's port."""

    def __init__(self, forward, pod):
        self.forward = forward
        self.pod = pod
        self.sock = forward.socket(REDIS_PORT)

    def close(self):
        # An end first shut down: the client's thread then reads an end of stream, not a
        # reset of a socket closed with bytes unread (which it prints as a traceback).
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.forward.close()


class _Progress:
    """Lines on stderr while waiting: when what is awaited changes, and every
    `PROGRESS_EVERY_SECONDS`."""

    def __init__(self, what, timeout):
        self.what = what
        self.timeout = timeout
        self.start = time.monotonic()
        self.last = (None, 0.0)

    def say(self, message):
        _say(message)

    def wait(self, deadline, waiting, pause=1.0):
        now = time.monotonic()
        elapsed = now - self.start
        if now > deadline:
            raise ConnectError(
                f"{self.what}: gave up after {self.timeout:.0f} s: {waiting}. "
                "`kubectl describe abcrun` and its Events say more; pass timeout= to wait longer"
            )
        said, when = self.last
        if waiting != said or now - when >= PROGRESS_EVERY_SECONDS:
            _say(f"waiting for {self.what}: {waiting} ({elapsed:.0f} s of {self.timeout:.0f} s)")
            self.last = (waiting, now)
        time.sleep(pause)


class _Forwarder:
    """A listener on 127.0.0.1 (a free port) whose every accepted connection gets a stream of
    its own from `open_stream` (a `_Stream`, or `_NotReady` to wait and try again, until
    `timeout`), piped both ways until either side ends."""

    def __init__(self, open_stream, timeout, say):
        self.open_stream = open_stream
        self.timeout = timeout
        self.say = say
        self.opened = 0
        self.failure = None  # a ConnectError that no wait can cure (a missing right)
        self._live = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.5)  # to notice close()
        self.address = self._listener.getsockname()[:2]
        threading.Thread(target=self._accept, name="abc-operator forward", daemon=True).start()

    def close(self):
        self._closed.set()
        with self._lock:
            live = list(self._live)
        for pipe in live:
            pipe.close()
        self._listener.close()

    def drop_all(self):
        with self._lock:
            live = list(self._live)
        for pipe in live:
            pipe.drop = True
        return len(live)

    def _accept(self):
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # closed
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._serve, args=(client,), name="abc-operator forwarded connection",
                daemon=True,
            ).start()

    def _serve(self, client):
        pipe = _Pipe(client)
        with self._lock:
            self._live.add(pipe)
        try:
            stream = self._open(pipe)
            if stream is not None:
                with self._lock:
                    self.opened += 1
                pipe.run(stream, self._closed)
        finally:
            with self._lock:
                self._live.discard(pipe)
            pipe.close()

    def _open(self, pipe):
        """A stream for `pipe`'s connection, waiting (with progress lines) while the Redis pod
        is not ready; None if it never gets one. The client's bytes wait in the socket."""
        deadline = time.monotonic() + self.timeout
        said = None
        while not self._closed.is_set() and not pipe.closed:
            try:
                stream = self.open_stream()
                if said is not None:
                    self.say("the Redis pod is back: forwarding again")
                return stream
            except _NotReady as err:
                if time.monotonic() > deadline:
                    self.say(f"gave up forwarding a connection after {self.timeout:.0f} s: {err}")
                    return None
                if str(err) != said:
                    self.say(f"a forwarded connection waits: {err}")
                    said = str(err)
                self._closed.wait(1)
            except ConnectError as err:
                # Before any stream was opened, `connect` raises it; later, it is news.
                self.failure = err
                if self.opened:
                    self.say(str(err))
                return None
        return None


class _Pipe:
    """One accepted connection and its stream, piped both ways. `drop`: end at the client's
    next bytes, which are not sent (a command never sent has no answer to lose)."""

    def __init__(self, client):
        self.client = client
        self.stream = None
        self.drop = False
        self.closed = False

    def run(self, stream, closed):
        self.stream = stream
        remote = stream.sock
        try:
            while not closed.is_set() and not self.closed:
                readable, _, _ = select.select([self.client, remote], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    if sock is self.client:
                        if self.drop:
                            return
                        remote.sendall(data)
                    else:
                        self.client.sendall(data)
        except (OSError, ValueError):  # a side closed meanwhile
            return

    def close(self):
        self.closed = True
        for end in (self.stream, self.client):
            if end is not None:
                try:
                    end.close()
                except OSError:
                    pass


def _say(message):
    print(f"abc_operator.connect: {message}", file=sys.stderr, flush=True)


def main(argv=None):
    """`python -m abc_operator.connect RUN [options] -- COMMAND...`: runs COMMAND (an
    unchanged master script) with `ABC_REDIS_HOST`, `ABC_REDIS_PORT` and `ABC_REDIS_PASSWORD`
    of the run's Redis, forwarded for as long as it runs; exits with its exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m abc_operator.connect",
        usage="%(prog)s RUN [options] -- COMMAND [ARGS...]",
        description="Run a pyABC master script on this machine for an AbcRun on a cluster: "
        "its Redis forwarded to 127.0.0.1, ABC_REDIS_HOST/PORT/PASSWORD set for the script.",
    )
    parser.add_argument("run", help="the AbcRun's name")
    parser.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
    parser.add_argument("--context", help="the kubeconfig context (default: the current one)")
    parser.add_argument(
        "--kubeconfig", help="the kubeconfig (default: $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds to wait for the run's Redis (default %(default)s)",
    )
    parser.add_argument(
        "--no-version-check", action="store_true",
        help="do not compare this Python's versions with a worker's",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after the first `--` is the command, options of its own included.
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
    if not command:
        parser.error("give the master's command after --, e.g. -- python gaussian.py")
    try:
        connection = connect(
            args.run, namespace=args.namespace, context=args.context,
            kubeconfig=args.kubeconfig, timeout=args.timeout,
            check_versions=not args.no_version_check,
        )
    except (ConnectError, ImportError) as err:
        print(f"abc_operator.connect: {err}", file=sys.stderr)
        return 1
    with connection:
        env = {**os.environ, **connection.environ()}
        process = subprocess.Popen(command, env=env)
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                continue  # the child got the same Ctrl-C: wait for its end


class _CallableModule(types.ModuleType):
    """This module, callable as `connect`: `abc_operator.connect` is this module once it is
    imported (Python binds a submodule to its package's attribute), and the package offers
    `abc_operator.connect(...)`."""

    def __call__(self, *args, **kwargs):
        return connect(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
