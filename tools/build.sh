#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok) and helm from the pinned Go modules under tools/, into a cache outside the
# checkout keyed by a hash of the pins, so fresh clones on the same machine reuse the binaries.
#
# Usage: tools/build.sh            builds what is missing, prints the bin directory
#        tools/build.sh --print    prints the bin directory without building
set -euo pipefail

tools=$(cd "$(dirname "$0")" && pwd)
cache_root=${ABC_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/tools}
key=$(cat "$tools"/*/go.mod "$tools"/*/go.sum "$tools/build.sh" <(go env GOVERSION) | sha256sum | cut -c1-16)
out=$cache_root/$key
bin=$out/bin

if [ "${1:-}" = "--print" ]; then
  echo "$bin"
  exit 0
fi

# module dir | binary name | package
targets=(
  "k8s|etcd|go.etcd.io/etcd/server/v3"
  "k8s|kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver"
  "k8s|kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager"
  "k8s|kube-scheduler|k8s.io/kubernetes/cmd/kube-scheduler"
  "k8s|kubectl|k8s.io/kubernetes/cmd/kubectl"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok"
  "helm|helm|helm.sh/helm/v3/cmd/helm"
)

mkdir -p "$bin" "$out/logs"
missing=0
for t in "${targets[@]}"; do
  IFS='|' read -r _ name _ <<<"$t"
  [ -x "$bin/$name" ] || missing=$((missing + 1))
done
if [ "$missing" -gt 0 ]; then
  echo "building $missing control-plane binaries from pinned Go modules (first time: about 15 minutes on 2 cores)" >&2
  start=$SECONDS
  for t in "${targets[@]}"; do
    IFS='|' read -r mod name pkg <<<"$t"
    [ -x "$bin/$name" ] && continue
    log=$out/logs/$name.log
    echo "  go build $name ..." >&2
    # -mod=readonly: the committed go.sum is the pin; a drifted module fails instead of moving.
    if ! (cd "$tools/$mod" && go build -mod=readonly \
          -o "$bin/$name.tmp" "$pkg") >"$log" 2>&1; then
      echo "tools/build.sh: building $name ($pkg) failed; its log is $log" >&2
      tail -n 20 "$log" >&2
      rm -f "$bin/$name.tmp"
      exit 1
    fi
    mv "$bin/$name.tmp" "$bin/$name"
  done
  echo "built in $((SECONDS - start)) s into $bin" >&2
fi

# kwok needs stages (how fake nodes and pods change state); the pinned kwok module ships them.
if [ ! -f "$out/kwok-stages.yaml" ]; then
  kwok_dir=$(cd "$tools/kwok" && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  {
    cat "$kwok_dir/kustomize/stage/node/fast/node-initialize.yaml"
    echo "---"
    cat "$kwok_dir/kustomize/stage/node/heartbeat/node-heartbeat.yaml"
    echo "---"
    cat "$kwok_dir/kustomize/stage/pod/fast/pod-ready.yaml"
    echo "---"
    cat "$kwok_dir/kustomize/stage/pod/fast/pod-delete.yaml"
  } >"$out/kwok-stages.yaml.tmp"
  mv "$out/kwok-stages.yaml.tmp" "$out/kwok-stages.yaml"
fi

echo "$bin"
