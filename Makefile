# abc-operator — see README.md. `make demo` first, `make test` second.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON := $(CURDIR)/.venv/bin/python
TESTENV := $(CURDIR)/target/testenv

.PHONY: demo check test-unit test deps browser tools promtool nextest cluster cluster-down cluster-real cluster-real-down crds build bench bench-scale images
# The operator image of the test cluster carries the debug build the tests use (tools/images.sh).
OPERATOR_DEBUG_BIN = $${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug/abc-operator

## demo: run the Gaussian example locally to the end (installs redis-server and pinned pyabc)
demo: deps
	$(CARGO) build --release --bin abc-operator
	ABC_PYTHON=$(PYTHON) ./target/release/abc-operator run examples/gaussian/abcrun.yaml

## check: the fast loop, no cluster: formatting, dependency licences and sources, pyflakes,
## shellcheck, clippy (warnings are errors), the unit tests and the CRD drift test
check:
	$(CARGO) fmt --check
	scripts/check-licenses.py
	scripts/pyflakes.sh
	scripts/shellcheck.sh
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --lib --bins
	$(CARGO) test --test crd_drift

## test-unit: the unit tests only (no Redis, no Python, no cluster; seconds)
test-unit:
	$(CARGO) test --lib --bins

## test: every test, real parts included (redis-server, pyabc, a loopback control plane with
## a fake node, and one with a real node running the images built here), run by cargo-nextest:
## the test binaries side by side, within the groups of .config/nextest.toml; then, alone, the
## one test that upgrades the operator release the real-node tests share (ignored in the first pass)
test: deps browser tools promtool nextest
	@set -euo pipefail; \
	$(CARGO) build --bin abc-operator; \
	env_dir=$(CURDIR)/target/testenv-test-$$$$; real_dir=$(CURDIR)/target/testenv-real-test-$$$$; \
	trap 'tools/cluster.sh down '$$env_dir'; tools/cluster.sh down '$$real_dir EXIT; \
	tools/cluster.sh up $$env_dir --owner-pid $$$$ >/dev/null; \
	ABC_OPERATOR_BIN=$(OPERATOR_DEBUG_BIN) tools/cluster.sh up $$real_dir --owner-pid $$$$ --real-node >/dev/null; \
	export ABC_TEST_KUBECONFIG=$$env_dir/kubeconfig ABC_REAL_NODE_KUBECONFIG=$$real_dir/kubeconfig \
	       ABC_PYTHON=$(PYTHON) ABC_TOOLS_BIN=$$(tools/build.sh --print) ABC_PROMTOOL=$$(tools/promtool.sh --print) \
	       PATH=$$(dirname $$(tools/nextest.sh --print)):$$PATH; \
	rc=0; $(CARGO) nextest run --all-targets --no-fail-fast || rc=$$?; \
	echo "make test: the real-node test that upgrades the shared operator release, alone, last"; \
	$(CARGO) nextest run --test real_node --run-ignored only --no-fail-fast || rc=$$?; \
	exit $$rc

deps:
	scripts/deps.sh

## browser: Debian's Chromium, in which `make test` loads each run's page headless (the demo
## and the benches do without it)
browser:
	scripts/deps.sh chromium

## nextest: install the pinned cargo-nextest, the runner of `make test` (cached)
nextest:
	tools/nextest.sh >/dev/null

## tools: build the control-plane binaries, helm and the real node's private registry from the
## pinned Go modules (cached)
tools:
	tools/build.sh >/dev/null
	tools/registry.sh >/dev/null

## promtool: build Prometheus' promtool from its pinned Go module (cached), with which the chart
## tests check the alert rules and the Grafana dashboard against a real controller's /metrics
promtool:
	tools/promtool.sh >/dev/null

## images: the images a real kubelet node runs (pause, redis, example, operator) as docker
## archives, built from Debian packages and PyPI without a registry (needs root; cached); the
## operator is the shipped build (Cargo.toml's profile dist)
images:
	$(CARGO) build --profile dist --bin abc-operator
	ABC_OPERATOR_BIN=$${CARGO_TARGET_DIR:-$(CURDIR)/target}/dist/abc-operator tools/images.sh

## cluster: start the loopback control plane; writes target/testenv/kubeconfig
cluster: tools
	tools/cluster.sh up $(TESTENV)

cluster-down:
	tools/cluster.sh down $(TESTENV)

## cluster-real: the control plane with a real node (kubelet, containerd, kube-proxy, CoreDNS)
## holding the images built here, and a provisioner for its default StorageClass `local`;
## writes target/testenv-real/kubeconfig (root only)
cluster-real: tools
	$(CARGO) build --bin abc-operator
	ABC_OPERATOR_BIN=$(OPERATOR_DEBUG_BIN) tools/cluster.sh up $(TESTENV)-real --real-node

cluster-real-down:
	tools/cluster.sh down $(TESTENV)-real

## crds: regenerate crds/ and the chart's CRD from the Rust types
crds:
	$(CARGO) run -q --bin abc-operator -- crd > crds/abcrun.yaml
	cp crds/abcrun.yaml charts/abc-operator/crds/abcrun.yaml

build:
	$(CARGO) build --release

## bench: side-by-side figures against pyABC by hand
bench: deps
	$(CARGO) build --release --bin abc-operator
	ABC_PYTHON=$(PYTHON) $(PYTHON) bench/bench.py

## bench-scale: the controller at cluster scale (bench/README.md, section S): 1,000 AbcRuns with
## 10,000 kwok worker pods, the current code against the code before the reconcile pipeline
## (built once into a cache by commit), both as shipped (profile dist); BENCH_QUICK=1 for 50
## runs / 500 pods
bench-scale: deps tools
	$(CARGO) build --profile dist --bin abc-operator
	ABC_PYTHON=$(PYTHON) ABC_OPERATOR_BIN=$${CARGO_TARGET_DIR:-$(CURDIR)/target}/dist/abc-operator \
	  $(PYTHON) bench/scale.py
