# abc-operator — see README.md. `make demo` first, `make test` second.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON := $(CURDIR)/.venv/bin/python
TESTENV := $(CURDIR)/target/testenv

.PHONY: demo test deps tools images cluster cluster-down crds build bench lint helm-lint clean-testenv

## demo: run the Gaussian example locally to the end (installs redis-server and pinned pyabc)
demo: deps
	$(CARGO) build --release --bin abc-operator
	ABC_PYTHON=$(PYTHON) ./target/release/abc-operator run examples/gaussian/abcrun.yaml

## test: every test, real parts included (redis-server, pyabc, a loopback control plane)
test: deps tools
	@set -euo pipefail; \
	env_dir=$(CURDIR)/target/testenv-test-$$$$; \
	tools/cluster.sh up $$env_dir --owner-pid $$$$ >/dev/null; \
	trap 'tools/cluster.sh down '$$env_dir EXIT; \
	export ABC_TEST_KUBECONFIG=$$env_dir/kubeconfig ABC_PYTHON=$(PYTHON) \
	       ABC_TOOLS_BIN=$$(tools/build.sh --print); \
	$(CARGO) test --all-targets --no-fail-fast -- --test-threads=4

deps:
	scripts/deps.sh

## tools: build the control-plane binaries and helm from the pinned Go modules (cached)
tools:
	tools/build.sh >/dev/null

## images: the images a real kubelet node runs (pause, redis, example, operator) as docker
## archives, built from Debian packages and PyPI without a registry (needs root; cached)
images:
	$(CARGO) build --release --bin abc-operator
	tools/images.sh

## cluster: start the loopback control plane; writes target/testenv/kubeconfig
cluster: tools
	tools/cluster.sh up $(TESTENV)

cluster-down:
	tools/cluster.sh down $(TESTENV)

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
