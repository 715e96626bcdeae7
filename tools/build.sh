#!/usr/bin/env bash
# Builds the test cluster's binaries from the pinned Go modules under tools/: the control plane
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl), the real node's
# kubelet, kube-proxy, volume provisioner and NetworkPolicy engine (kube-router), kwok, helm
# and CoreDNS. They go into a cache
# outside the checkout keyed by a hash of the pins, so fresh clones on the same machine reuse
# the binaries.
#
# Usage: tools/build.sh            builds what is missing, prints the bin directory
#        tools/build.sh --print    prints the bin directory without building
set -euo pipefail

tools=$(cd "$(dirname "$0")" && pwd)
cache_root=${ABC_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/tools}
# The Go files count too: tools/coredns/main.go chooses CoreDNS's plugins, and
# tools/provisioner/main.go is the volume provisioner.
key=$(cat "$tools"/*/go.mod "$tools"/*/go.sum "$tools"/*/*.go "$tools/build.sh" <(go env GOVERSION) |
  sha256sum | cut -c1-16)
out=$cache_root/$key
bin=$out/bin

if [ "${1:-}" = "--print" ]; then
  echo "$bin"
  exit 0
fi

# module dir | binary name | package. One `go build` per module builds all of its missing
# binaries: the packages they share are loaded once and compiles and links overlap on both
# cores. etcd's package path ends in v3, so go names that binary "server"; it is renamed.
targets=(
  "k8s|etcd|go.etcd.io/etcd/server/v3"
  "k8s|kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver"
  "k8s|kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager"
  "k8s|kube-scheduler|k8s.io/kubernetes/cmd/kube-scheduler"
  "k8s|kubectl|k8s.io/kubernetes/cmd/kubectl"
  "k8s|kubelet|k8s.io/kubernetes/cmd/kubelet"
  "k8s|kube-proxy|k8s.io/kubernetes/cmd/kube-proxy"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok"
  "helm|helm|helm.sh/helm/v3/cmd/helm"
  "coredns|coredns|abc-operator/tools/coredns"
  "provisioner|provisioner|abc-operator/tools/provisioner"
  "kube-router|kube-router|github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
modules=(k8s kwok helm coredns provisioner kube-router)

# The name `go build -o DIR/` gives a main package: its last path element, without a /vN suffix.
go_name() {
  local p=$1
  [[ ${p##*/} =~ ^v[0-9]+$ ]] && p=${p%/*}
  echo "${p##*/}"
}

mkdir -p "$bin" "$out/logs"
missing=0
for t in "${targets[@]}"; do
  IFS='|' read -r _ name _ <<<"$t"
  [ -x "$bin/$name" ] || missing=$((missing + 1))
done
if [ "$missing" -gt 0 ]; then
  echo "building $missing test-cluster binaries from pinned Go modules (first time: about 15 minutes on 2 cores)" >&2
  start=$SECONDS
  for mod in "${modules[@]}"; do
    names=() pkgs=()
    for t in "${targets[@]}"; do
      IFS='|' read -r m name pkg <<<"$t"
      if [ "$m" != "$mod" ] || [ -x "$bin/$name" ]; then continue; fi
      names+=("$name")
      pkgs+=("$pkg")
    done
    [ "${#pkgs[@]}" -gt 0 ] || continue
    # -s -w: no symbol table and no DWARF; links take a fraction of the time and the binaries
    # shrink by a third. No -trimpath: it changes every compile's cache key, so the shared Go
    # build cache filled by earlier builds would be thrown away.
    ldflags="-s -w"
    if [ "$mod" = k8s ]; then
      # Plain go build stamps Kubernetes binaries v0.0.0-master; the kubelet reports its
      # version to the API server, so stamp the pinned one (as kubernetes' hack/lib/version.sh).
      kv=$(cd "$tools/k8s" && go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes)
      IFS=. read -r major minor _ <<<"${kv#v}"
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=$kv -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
      done
    fi
    log=$out/logs/$mod.log
    tmp=$out/tmp-$mod
    rm -rf "$tmp"
    mkdir -p "$tmp"
    echo "  go build ($mod) ${names[*]} ..." >&2
    step=$SECONDS
    # -mod=readonly: the committed go.sum is the pin; a drifted module fails instead of moving.
    # -buildvcs=false: the binaries are keyed by the pins, not by this checkout's commit.
    if ! (cd "$tools/$mod" && go build -mod=readonly -buildvcs=false -ldflags="$ldflags" \
          -o "$tmp/" "${pkgs[@]}") >"$log" 2>&1; then
      echo "tools/build.sh: building ${names[*]} (module tools/$mod) failed; its log is $log" >&2
      tail -n 20 "$log" >&2
      rm -rf "$tmp"
      exit 1
    fi
    for i in "${!names[@]}"; do
      mv "$tmp/$(go_name "${pkgs[$i]}")" "$bin/${names[$i]}"
    done
    rm -rf "$tmp"
    echo "    $((SECONDS - step)) s" >&2
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
