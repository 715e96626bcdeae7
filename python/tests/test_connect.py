"""`abc_operator.connect`, what needs no cluster: the lazy import (masters in the cluster have
no `kubernetes`), what it reads from an AbcRun, the version comparison, and its forwarding
engine with real sockets and a real redis-server (the real-node tests in
tests/real_node/connect.rs drive it against a real cluster)."""

import contextlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

import redis

import abc_operator
from analysis import RedisServer

HAS_KUBERNETES = importlib.util.find_spec("kubernetes") is not None
NO_KUBERNETES = "the `kubernetes` package is not installed (pip install './python[connect]')"


def python(code, **env):
    """Runs `code` in a fresh Python with this one's path; (exit code, stdout + stderr)."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **env},
    )
    return out.returncode, out.stdout + out.stderr


class LazyImport(unittest.TestCase):
    def test_importing_the_package_imports_neither_connect_nor_kubernetes(self):
        code, out = python(
            """
            import sys, abc_operator
            print(sorted(m for m in sys.modules if m.startswith(("kubernetes", "abc_operator."))))
            """
        )
        self.assertEqual((code, out.strip()), (0, "[]"))

    def test_without_kubernetes_connect_says_how_to_install_it(self):
        # None in sys.modules is how Python marks a module that cannot be imported.
        code, out = python(
            """
            import sys
            sys.modules["kubernetes"] = None
            import abc_operator
            try:
                abc_operator.connect("no-master")
            except ImportError as err:
                print("ImportError:", err)
            """
        )
        self.assertEqual(code, 0, out)
        self.assertIn("ImportError: abc_operator.connect needs the Kubernetes client", out)
        self.assertIn("pip install 'abc-operator[connect]'", out)

    def test_connect_stays_callable_when_its_module_is_imported_by_name(self):
        from abc_operator.connect import ConnectError, connect

        self.assertTrue(callable(abc_operator.connect))
        self.assertIs(abc_operator.connect.connect, connect)
        self.assertIs(abc_operator.connect.ConnectError, ConnectError)

    def test_the_module_the_operator_ships_alone_says_where_connect_is(self):
        folder = tempfile.mkdtemp(prefix="abc-operator-shipped-")
        self.addCleanup(shutil.rmtree, folder)
        shutil.copy(abc_operator.__file__, os.path.join(folder, "abc_operator.py"))
        code, out = python(
            """
            import abc_operator
            assert abc_operator.__file__.endswith("abc_operator.py"), abc_operator.__file__
            try:
                abc_operator.connect
            except AttributeError as err:
                print("AttributeError:", err)
            """,
            PYTHONPATH=folder,
        )
        self.assertEqual(code, 0, out)
        self.assertIn("abc_operator.connect is in the installed package", out)


class WhatARunSays(unittest.TestCase):
    def test_the_password_lives_where_the_operator_puts_it(self):
        from abc_operator.connect import password_secret

        self.assertEqual(
            password_secret("gaussian", {"spec": {"image": "i"}}),
            ("gaussian-redis-password", "password"),
        )
        own = {"spec": {"redis": {"managed": {"passwordSecret": {"name": "mine", "key": "pw"}}}}}
        self.assertEqual(password_secret("gaussian", own), ("mine", "pw"))
        external = {
            "spec": {"redis": {"external": {"host": "h", "passwordSecret": {"name": "ext"}}}}
        }
        self.assertEqual(password_secret("gaussian", external), ("ext", "password"))

    def test_a_created_run_has_this_python_as_master_and_stops_when_left_idle(self):
        from abc_operator.connect import CREATED_IDLE_TIMEOUT_SECONDS, ConnectError, new_run

        run = new_run("mine", "abc", {"image": "img", "workers": {"replicas": 2}})
        self.assertEqual(run["apiVersion"], "abc-operator.dev/v1alpha1")
        self.assertEqual(run["kind"], "AbcRun")
        self.assertEqual(run["metadata"], {"name": "mine", "namespace": "abc"})
        self.assertEqual(
            run["spec"],
            {
                "idleTimeoutSeconds": CREATED_IDLE_TIMEOUT_SECONDS,
                "image": "img",
                "workers": {"replicas": 2},
            },
        )
        self.assertEqual(
            new_run("mine", "abc", {"image": "i", "idleTimeoutSeconds": 60})["spec"][
                "idleTimeoutSeconds"
            ],
            60,
        )
        with self.assertRaisesRegex(ConnectError, "leave spec.master out"):
            new_run("mine", "abc", {"image": "i", "master": {"command": ["python"]}})
        with self.assertRaisesRegex(ConnectError, "as a dict"):
            new_run("mine", "abc", "image: i")


class Versions(unittest.TestCase):
    def test_what_a_pickled_model_needs_to_be_the_same_is_compared(self):
        from abc_operator.connect import local_versions, version_differences

        here = local_versions()
        self.assertEqual(here["python"], list(sys.version_info[:3]))
        self.assertEqual(here["pyabc"], "0.13.0")
        self.assertEqual(version_differences(here, dict(here)), [])
        other_micro = {**here, "python": [*here["python"][:2], here["python"][2] + 1]}
        self.assertEqual(version_differences(here, other_micro), [], "micro versions may differ")
        other = {"python": [3, here["python"][1] + 1, 0], "pyabc": "0.12.0", "cloudpickle": None}
        differences = version_differences(here, other)
        self.assertEqual(len(differences), 3, differences)
        self.assertIn(f"Python {sys.version_info[0]}.{sys.version_info[1]}", differences[0])
        self.assertIn("pyabc 0.13.0 here, 0.12.0 in the workers", differences[1])
        self.assertIn("cloudpickle", differences[2])
        self.assertIn("missing in the workers", differences[2])

    def test_the_workers_script_prints_the_same_versions(self):
        from abc_operator.connect import VERSIONS_MARK, VERSIONS_SCRIPT, local_versions

        out = subprocess.run(
            [sys.executable, "-c", VERSIONS_SCRIPT], capture_output=True, text=True, check=True
        ).stdout
        self.assertTrue(out.startswith(VERSIONS_MARK), out)
        self.assertEqual(json.loads(out[len(VERSIONS_MARK):]), local_versions())


class TcpStream:
    """A stream to a TCP address, in place of a forwarded one (the forwarding engine pipes
    either alike)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))

    def close(self):
        self.sock.close()


class Forwarding(unittest.TestCase):
    """The engine behind `connect`'s local port, with a real redis-server behind it."""

    def setUp(self):
        from abc_operator.connect import _Forwarder

        self.redis = RedisServer()
        self.addCleanup(self.redis.close)
        self.said = []
        self.make = lambda open_stream: _Forwarder(open_stream, 30, self.said.append)

    def client(self, forwarder):
        host, port = forwarder.address
        client = redis.Redis(host=host, port=port, password=RedisServer.PASSWORD)
        self.addCleanup(client.close)
        return client

    def test_each_connection_gets_its_own_stream_and_a_dropped_one_costs_no_command(self):
        forwarder = self.make(lambda: TcpStream(self.redis.port))
        self.addCleanup(forwarder.close)
        self.assertEqual(forwarder.address[0], "127.0.0.1")
        first, second = self.client(forwarder), self.client(forwarder)
        self.assertEqual(first.incr("n"), 1)
        self.assertEqual(second.incr("n"), 2)
        self.assertEqual(forwarder.opened, 2)

        self.assertEqual(forwarder.drop_all(), 2)
        # The next command of each breaks its stream unsent; redis-py connects again (a new
        # stream) and sends it once.
        self.assertEqual(first.incr("n"), 3)
        self.assertEqual(second.incr("n"), 4)
        self.assertEqual(self.redis.client.get("n"), b"4")
        self.assertEqual(forwarder.opened, 4)

    def test_a_blocked_blpop_gets_its_answer_and_its_next_command_a_new_stream(self):
        forwarder = self.make(lambda: TcpStream(self.redis.port))
        self.addCleanup(forwarder.close)
        master = self.client(forwarder)
        master.ping()
        popped = []
        waiting = threading.Thread(target=lambda: popped.append(master.blpop("queue")))
        waiting.start()
        time.sleep(0.3)
        self.assertEqual(forwarder.drop_all(), 1)
        self.redis.client.rpush("queue", b"result")
        waiting.join(10)
        self.assertEqual(popped, [(b"queue", b"result")], "the answer on its way is not lost")
        self.assertEqual(master.llen("queue"), 0)
        self.assertEqual(forwarder.opened, 2)

    def test_a_connection_waits_while_redis_is_not_ready_and_says_so(self):
        from abc_operator.connect import _NotReady

        ready_at = time.monotonic() + 1.5

        def open_stream():
            if time.monotonic() < ready_at:
                raise _NotReady("Redis pod r-1: ContainerCreating")
            return TcpStream(self.redis.port)

        forwarder = self.make(open_stream)
        self.addCleanup(forwarder.close)
        self.assertTrue(self.client(forwarder).ping())
        self.assertGreaterEqual(time.monotonic(), ready_at)
        self.assertEqual(
            self.said,
            [
                "a forwarded connection waits: Redis pod r-1: ContainerCreating",
                "the Redis pod is back: forwarding again",
            ],
        )

    def test_a_missing_right_fails_the_connection_and_is_kept_for_connect_to_raise(self):
        from abc_operator.connect import ConnectError

        refusal = ConnectError("you may not create pods/portforward in namespace 'abc'")

        def open_stream():
            raise refusal

        forwarder = self.make(open_stream)
        self.addCleanup(forwarder.close)
        client = redis.Redis(*forwarder.address, password="x", retry=None)
        self.addCleanup(client.close)
        with self.assertRaises(redis.exceptions.ConnectionError):
            client.ping()
        self.assertIs(forwarder.failure, refusal)
        self.assertEqual(self.said, [], "connect raises it: no stream was ever opened")

    def test_closing_breaks_the_connections_and_frees_the_port(self):
        forwarder = self.make(lambda: TcpStream(self.redis.port))
        client = self.client(forwarder)
        client.ping()
        forwarder.close()
        with self.assertRaises(redis.exceptions.ConnectionError):
            redis.Redis(*forwarder.address, password="x", retry=None).ping()


@unittest.skipUnless(HAS_KUBERNETES, NO_KUBERNETES)
class WithTheKubernetesClient(unittest.TestCase):
    def test_a_kubeconfig_that_cannot_be_used_says_what_to_pass(self):
        from abc_operator.connect import ConnectError

        missing = os.path.join(tempfile.gettempdir(), "abc-operator-no-such-kubeconfig")
        with self.assertRaisesRegex(ConnectError, "cannot use the kubeconfig .*Pass kubeconfig="):
            abc_operator.connect("no-master", kubeconfig=missing)

    def test_a_refused_websocket_handshake_is_read_as_its_status(self):
        from kubernetes.client import ApiException

        from abc_operator.connect import _reason, _status

        refused_upgrade = ApiException(status=0, reason="Handshake status 403 Forbidden")
        self.assertEqual(_status(refused_upgrade), 403)
        self.assertEqual(_status(ApiException(status=404, reason="Not Found")), 404)
        refused = ApiException(status=403, reason="Forbidden")
        refused.body = '{"kind": "Status", "message": "secrets \\"x\\" is forbidden"}'
        self.assertEqual(_reason(refused), 'secrets "x" is forbidden')
        # What websocket-client raises for a refused upgrade (its answer's bytes at the
        # end), as the client wraps it.
        message = (
            'pods "r" is forbidden: User "u" cannot get resource "pods/portforward" in API '
            'group "" in the namespace "abc"'
        )
        answer = json.dumps({"kind": "Status", "message": message, "code": 403}).encode()
        handshake = ApiException(
            status=0,
            reason=f"Handshake status 403 Forbidden -+-+- {{'audit-id': 'a'}} -+-+- {answer}",
        )
        self.assertEqual(_status(handshake), 403)
        self.assertEqual(_reason(handshake), message)

    def test_the_command_line_needs_a_command_and_names_a_bad_kubeconfig(self):
        code, out = python("import sys, runpy; sys.argv = ['connect', 'r']; "
                           "runpy.run_module('abc_operator.connect', run_name='__main__')")
        self.assertEqual(code, 2, out)
        self.assertIn("give the master's command after --", out)
        missing = os.path.join(tempfile.gettempdir(), "abc-operator-no-such-kubeconfig")
        err = io.StringIO()
        from abc_operator.connect import main

        with contextlib.redirect_stderr(err):
            self.assertEqual(main(["r", "--kubeconfig", missing, "--", "true"]), 1)
        self.assertIn("cannot use the kubeconfig", err.getvalue())


if __name__ == "__main__":
    unittest.main()
