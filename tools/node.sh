#!/usr/bin/env bash
# A real node for the test control plane: containerd and runc (Debian's packages, started on
# private paths with their own config; no system service is touched), a CNI bridge, a kubelet,
# kube-proxy (iptables), CoreDNS and a NetworkPolicy engine (kube-router's network-policy
# controller alone: iptables and ipset), all built or installed here, the project's images
# imported without a registry, and a private registry with basic auth holding a copy of the
# example image (for the pull-secret tests). tools/cluster.sh calls it for `up DIR --real-node`.
#
# Usage: tools/node.sh check                 can this machine run containers? (names what is missing)
#        tools/node.sh net-up DIR            the pod bridge (the API server binds to its address)
#        tools/node.sh start DIR BIN         containerd, images, the private registry, kubelet,
#                                            kube-proxy, CoreDNS, the policy engine; returns once the node is Ready,
#                                            holds the images and the engine has set up its rules
#        tools/node.sh down                  stops and removes exactly what net-up/start added
#
# Only one real node can exist on a machine at a time: iptables' KUBE-* chains, ipsets, the
# kubepods cgroups, /var/log/containers and containerd's shim sockets are global. The node's own state
# (pids, what the machine looked like before) lives in $RUN, so `down` can clean up a node
# whose DIR is gone.
#
# Network: pods get addresses in $POD_CIDR on the bridge $BRIDGE, with routes only to the pod
# and Service ranges (no default route), so nothing a pod does leaves this machine. The host
# routes the Service range to the bridge too, so a ClusterIP without endpoints never goes out
# of the machine's uplink.
#
# NetworkPolicy: kube-router (only its firewall: no routing, no service proxy) filters the
# traffic of the node's pods in iptables, with ipsets of pod addresses. Pods talk to each other
# across the bridge, so `net.bridge.bridge-nf-call-iptables` is on while the node runs (bridged
# packets pass iptables' FORWARD chain); `down` puts back the value it had, and removes the
# engine's chains (KUBE-ROUTER-*, KUBE-NWPLCY-*, KUBE-POD-FW-*) and every ipset it created.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

NODE_NAME=abc-node-0
BRIDGE=abcbr0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
DNS_IP=$NODE_IP
RUN=/run/abc-node
SOCK=$RUN/containerd.sock
KUBELET_PORT=10250
# Sysctls the kubelet, the CNI bridge and kube-proxy may change; restored by `down`.
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.bridge.bridge-nf-call-iptables
  net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait)

log() { echo "tools/node.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# --- check: fail at once, naming what is missing -------------------------------------------
check() {
  # Without root nothing else can even be probed.
  [ "$(id -u)" = 0 ] || die "this machine cannot run a real node here: it needs root (a kubelet and containerd do)"
  local missing=()
  grep -qw overlay /proc/filesystems || missing+=("the overlay file system (kernel)")
  [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] ||
    missing+=("cgroups (no memory controller under /sys/fs/cgroup)")
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    if ip link add abc-probe0 type bridge 2>/dev/null; then
      ip link del abc-probe0
    else
      missing+=("Linux bridges (kernel)")
    fi
  fi
  unshare --net --mount true 2>/dev/null || missing+=("network and mount namespaces (unshare failed)")
  if [ ${#missing[@]} -gt 0 ]; then
    local IFS=';'
    die "this machine cannot run a real node; missing: ${missing[*]}"
  fi
}

# Debian's packages of the node (containerd, runc, CNI plugins, iptables, conntrack, ipset).
install_packages() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v ipset >/dev/null || need+=(ipset)
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${need[*]}"
  if [ -z "$(find /var/lib/apt/lists/ -mindepth 1 -maxdepth 1 ! -name '.*' ! -name '*lock*' ! -name '*partial*' \
    -print -quit 2>/dev/null)" ]; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    die "installing ${need[*]} failed"
  # The containerd package enables a system service; this node never uses it.
}

alive() { [ -f "$RUN/pids/$1" ] && kill -0 "$(cat "$RUN/pids/$1")" 2>/dev/null; }

# --- net-up: record the machine's state, then the bridge ------------------------------------
net_up() {
  local dir=$1
  if [ -f "$RUN/dir" ]; then
    if alive kubelet || alive containerd; then
      die "a real node is already running on this machine (from $(cat "$RUN/dir")); only one can exist at a time: stop it with tools/cluster.sh down $(cat "$RUN/dir")"
    fi
    log "cleaning up a previous node that was not stopped"
    down
  fi
  check
  install_packages
  mkdir -p "$RUN/pids" "$RUN/before" "$dir/node"
  echo "$dir" >"$RUN/dir"
  # What `down` restores or removes: sysctls, iptables chains, nft tables, log files.
  for s in "${SYSCTLS[@]}"; do
    sysctl -n "$s" 2>/dev/null >"$RUN/before/sysctl.$s" || rm -f "$RUN/before/sysctl.$s"
  done
  local ipt
  for ipt in iptables ip6tables; do
    "$ipt-save" 2>/dev/null | grep -o '^:[A-Z0-9-]*' | sort -u >"$RUN/before/chains.$ipt" || true
  done
  nft list tables 2>/dev/null | sort >"$RUN/before/nft-tables" || true
  ipset list -n 2>/dev/null | sort >"$RUN/before/ipsets" || true
  ls -1 /var/log/containers 2>/dev/null >"$RUN/before/containers-logs" || true
  [ -d /var/log/containers ] || touch "$RUN/before/no-containers-log-dir"

  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service addresses go to the bridge (where kube-proxy's DNAT applies), never to the uplink.
  ip route add "$SERVICE_CIDR" dev "$BRIDGE"
  # Bridged pod-to-pod packets through iptables, where the policy engine filters them (the
  # value before is in $RUN/before, restored by `down`).
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
}

# --- certificates and kubeconfigs of the node's components ----------------------------------
client_cert() { # name CN O
  local pki=$1 name=$2 cn=$3 org=$4 subj="/CN=$3"
  [ -n "$org" ] && subj="/O=$org/CN=$cn"
  openssl req -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -out "$pki/$name.crt" -days 365 -extfile "$pki/client.ext" 2>/dev/null
}

kubeconfig_for() { # file server pki name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: abc-testenv
  cluster: {server: "$2", certificate-authority: "$3/ca.crt"}
users:
- name: $4
  user: {client-certificate: "$3/$4.crt", client-key: "$3/$4.key"}
contexts:
- name: abc-testenv
  context: {cluster: abc-testenv, user: $4}
current-context: abc-testenv
EOF
}

start_proc() { # name logfile cmd...
  local name=$1 logfile=$2
  shift 2
  "$@" >"$logfile" 2>&1 &
  echo $! >"$RUN/pids/$name"
}

fail_start() {
  log "$1 failed to start; the end of its log ($2):"
  tail -n 20 "$2" >&2 || true
  exit 1
}

# --- the private registry -----------------------------------------------------------------
# A registry on the node's address with basic auth (a password made here), holding a copy of
# the example image that the node does not have, so that a pod of it is pulled with a pull
# secret, as a private registry serves a cluster (tests/real_node.rs). containerd reaches it
# over plain HTTP (its hosts.toml); what the tests need is written to DIR/registry.json.
#
# The copy differs from the example image by a label, so it has an image ID of its own:
# containerd 1.6's CRI loses track of an imported name (the kubelet then finds the image
# missing and tries to pull it) after a pull of another name of the same image ID.
REGISTRY=$NODE_IP:5000
private_registry() { # dir example-archive
  local dir=$1 archive=$2
  local node=$dir/node logs=$dir/logs regbin password
  local user=abc-e2e image=$REGISTRY/abc/model:private copy=$dir/node/registry-image
  regbin=$("$here/registry.sh") || die "building the registry failed (see above)"
  password=$(openssl rand -hex 16)
  mkdir -p "$node/registry-data" "$node/registry/$REGISTRY"
  echo "$password" | "$regbin/htpasswd" "$user" >"$node/registry-htpasswd"
  cat >"$node/registry-config.yml" <<EOF
version: 0.1
log: {level: info, formatter: text}
storage:
  filesystem: {rootdirectory: "$node/registry-data"}
http: {addr: "$REGISTRY"}
auth:
  htpasswd: {realm: abc-e2e, path: "$node/registry-htpasswd"}
EOF
  printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$REGISTRY" "$REGISTRY" >"$node/registry/$REGISTRY/hosts.toml"
  # No traces: the registry would send them to localhost:4318.
  start_proc registry "$logs/registry.log" env OTEL_TRACES_EXPORTER=none \
    "$regbin/registry" serve "$node/registry-config.yml"
  for i in $(seq 100); do
    alive registry || fail_start registry "$logs/registry.log"
    # Up: it refuses a request without credentials.
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$REGISTRY/v2/")" = 401 ] && break
    [ "$i" = 100 ] && fail_start registry "$logs/registry.log"
    sleep 0.1
  done
  log "pushing a copy of the example image to the private registry as $image"
  rm -rf "$copy"
  {
    skopeo copy -q "docker-archive:$archive" "oci:$copy:private" &&
      python3 "$here/registry/relabel.py" "$copy" &&
      skopeo copy -q --dest-tls-verify=false --dest-creds "$user:$password" \
        "oci:$copy:private" "docker://$image"
  } >"$logs/registry-push.log" 2>&1 || fail_start "the push to the private registry" "$logs/registry-push.log"
  rm -rf "$copy"
  printf '{"image": "%s", "username": "%s", "password": "%s"}\n' "$image" "$user" "$password" \
    >"$dir/registry.json"
}

# --- start: containerd, images, kubelet, kube-proxy, CoreDNS --------------------------------
start() {
  local dir=$1 bin=$2
  local node=$dir/node pki=$dir/pki logs=$dir/logs
  echo "$bin" >"$RUN/bin"
  local server
  server=$(grep -m1 'server:' "$dir/kubeconfig" | awk '{print $2}')
  mkdir -p "$node"/{containerd,kubelet,cni/net.d,cni/ipam,pod-logs,volume-plugins} "$logs"

  # containerd on private paths. restrict_oom_score_adj: this VM withholds CAP_SYS_RESOURCE
  # from every process, root included, so a negative oom_score_adj (which the CRI asks for the
  # sandbox) fails every sandbox without it.
  cat >"$node/containerd.toml" <<EOF
version = 2
root = "$node/containerd"
state = "$RUN/containerd"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/abc-pause:3.10"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  # Nothing is pulled here: images are imported. A pull of a missing image (an unqualified
  # name means docker.io) fails at once on this machine instead of leaving it.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$node/registry"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"
EOF
  cat >"$node/cni/net.d/10-abc-pods.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "abc-pods",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "hairpinMode": true, "ipMasq": false,
    "ipam": {
      "type": "host-local", "dataDir": "$node/cni/ipam",
      "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
      "routes": [{"dst": "$SERVICE_CIDR"}]
    }
  }, {"type": "loopback"}]
}
EOF
  # containerd 1.6 cannot read a hosts.toml without a [host] table (it logs "invalid `host`
  # tree" and goes to registry-1.docker.io after all).
  mkdir -p "$node/registry/docker.io"
  printf 'server = "https://127.0.0.1:1"\n[host."https://127.0.0.1:1"]\n  capabilities = ["pull", "resolve"]\n' \
    >"$node/registry/docker.io/hosts.toml"
  start_proc containerd "$logs/containerd.log" containerd --config "$node/containerd.toml"
  for i in $(seq 100); do
    alive containerd || fail_start containerd "$logs/containerd.log"
    ctr -a "$SOCK" version >/dev/null 2>&1 && break
    [ "$i" = 100 ] && fail_start containerd "$logs/containerd.log"
    sleep 0.1
  done

  # Images: built (cached by a hash of their inputs) by tools/images.sh, imported here.
  local images
  images=$("$here/images.sh") || die "building the images failed (see above)"
  local refs=() example_archive=""
  while IFS=$'\t' read -r ref archive; do
    [ -n "$ref" ] || continue
    refs+=("$ref")
    [[ $ref == abc-example-gaussian:* ]] && example_archive=$archive
    log "importing $ref"
    ctr -a "$SOCK" -n k8s.io images import "$archive" >"$logs/import.log" 2>&1 ||
      fail_start "the import of $ref" "$logs/import.log"
  done <<<"$images"

  [ -n "$example_archive" ] || die "tools/images.sh gave no example image"
  private_registry "$dir" "$example_archive"

  # Certificates of the node's components, signed by the cluster CA.
  client_cert "$pki" kubelet "system:node:$NODE_NAME" system:nodes
  client_cert "$pki" kube-proxy system:kube-proxy ""
  client_cert "$pki" coredns abc-testenv-coredns ""
  client_cert "$pki" kube-router abc-testenv-kube-router ""
  kubeconfig_for "$node/kubelet.kubeconfig" "$server" "$pki" kubelet
  kubeconfig_for "$node/kube-proxy.kubeconfig" "$server" "$pki" kube-proxy
  kubeconfig_for "$node/coredns.kubeconfig" "$server" "$pki" coredns
  kubeconfig_for "$node/kube-router.kubeconfig" "$server" "$pki" kube-router
  local kubectl=("$bin/kubectl" --kubeconfig "$dir/kubeconfig")
  # The control plane authorizes with RBAC only (no Node authorizer): nodes get system:node.
  "${kubectl[@]}" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: abc-testenv-nodes}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:nodes}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: abc-testenv-coredns}
rules:
- {apiGroups: [""], resources: [services, endpoints, namespaces, pods], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: abc-testenv-coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: abc-testenv-coredns}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: abc-testenv-coredns}]
---
# The policy engine only reads; its informers also list Services and Endpoints(Slices).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: abc-testenv-kube-router}
rules:
- {apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [pods, namespaces, services, endpoints], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
- {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: abc-testenv-kube-router}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: abc-testenv-kube-router}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: abc-testenv-kube-router}]
EOF

  # Pods resolve through CoreDNS on the node's address; nothing is forwarded off the machine.
  printf 'nameserver %s\n' "$DNS_IP" >"$node/resolv.conf"
  cat >"$node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This kernel has cgroup v1 (hybrid); kubelet 1.35 refuses it unless told otherwise.
failCgroupV1: false
# containerd 1.6 cannot tell the kubelet its cgroup driver.
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
makeIPTablesUtilChains: false
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: $node/resolv.conf
podLogsDir: $node/pod-logs
volumePluginDir: $node/volume-plugins
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
# Images cannot be pulled again here: never collect them, and evict only when really short.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
EOF
  start_proc kubelet "$logs/kubelet.log" "$bin/kubelet" \
    --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" --cert-dir "$node/kubelet/pki" \
    --node-ip "$NODE_IP" --hostname-override "$NODE_NAME"

  cat >"$node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $node/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$NODE_IP/32]
# Leaves route_localnet and the conntrack sysctls alone.
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start_proc kube-proxy "$logs/kube-proxy.log" "$bin/kube-proxy" --config "$node/kube-proxy.yaml"

  cat >"$node/Corefile" <<EOF
.:53 {
    bind $DNS_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $node/coredns.kubeconfig abc-testenv
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
  start_proc coredns "$logs/coredns.log" "$bin/coredns" -conf "$node/Corefile"

  # Ready, and holding every image (the kubelet reports them in node.status.images).
  local status imgs missing
  for i in $(seq 600); do
    for name in containerd kubelet kube-proxy coredns; do
      alive "$name" || fail_start "$name" "$logs/$name.log"
    done
    status=$("${kubectl[@]}" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    if [ "$status" = "True" ]; then
      imgs=$("${kubectl[@]}" get node "$NODE_NAME" -o jsonpath='{.status.images[*].names[*]}')
      missing=0
      for ref in "${refs[@]}"; do
        [[ " $imgs " == *" docker.io/library/$ref "* ]] || missing=1
      done
      [ "$missing" = 0 ] && break
    fi
    [ "$i" = 600 ] && fail_start "the node (Ready with its images)" "$logs/kubelet.log"
    sleep 0.2
  done

  # The NetworkPolicy engine: kube-router's network-policy controller alone, started once the
  # node exists (it finds the node's address by name; no pod can start before it is Ready). No
  # health or metrics port is opened. Returns once its rules are in place: the jump to its
  # chain in FORWARD, made by its first sync.
  start_proc kube-router "$logs/kube-router.log" "$bin/kube-router" \
    --kubeconfig "$node/kube-router.kubeconfig" --hostname-override "$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false --run-loadbalancer=false \
    --service-cluster-ip-range "$SERVICE_CIDR" --health-port 0 --metrics-port 0
  for i in $(seq 600); do
    alive kube-router || fail_start kube-router "$logs/kube-router.log"
    iptables -t filter -S FORWARD 2>/dev/null | grep -q -- '-j KUBE-ROUTER-FORWARD' && break
    [ "$i" = 600 ] && fail_start "kube-router (its rules)" "$logs/kube-router.log"
    sleep 0.2
  done
}

# --- down ------------------------------------------------------------------------------------
stop_proc() { # name
  local pid
  [ -f "$RUN/pids/$1" ] || return 0
  pid=$(cat "$RUN/pids/$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN/pids/$1"
}

# Every process in the node's pod cgroups (containers and their shims' children).
kill_pods() {
  local procs
  for _ in 1 2 3; do
    mapfile -t procs < <(find /sys/fs/cgroup -path '*kubepods*' -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ "${#procs[@]}" -gt 0 ] || break
    kill -9 "${procs[@]}" 2>/dev/null || true
    sleep 0.3
  done
}

# containerd's shims outlive containerd; they are found by the socket they were given.
kill_shims() {
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK" || true); do
    kill -9 "$pid" 2>/dev/null || true
  done
}

unmount_under() { # prefix
  local m
  # Deepest first.
  awk -v p="$1" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

remove_cgroups() {
  local d
  find /sys/fs/cgroup -depth -type d -path '*kubepods*' 2>/dev/null | while read -r d; do
    rmdir "$d" 2>/dev/null || true
  done
}

# KUBE-* chains that were not there before `net-up`, in every table, with the jumps to them.
remove_new_chains() {
  local ipt table chain
  for ipt in iptables ip6tables; do
    for table in nat filter mangle; do
      local new=()
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^KUBE-/ {print $2}'); do
        grep -qx ":$chain" "$RUN/before/chains.$ipt" 2>/dev/null || new+=("$chain")
      done
      [ ${#new[@]} -gt 0 ] || continue
      for chain in "${new[@]}"; do
        # A chain nothing jumps to any more (kube-proxy's clean-up removes jumps) has no rule
        # to delete: grep's "no match" must not end `down` (pipefail) before the rest.
        { "$ipt" -t "$table" -S 2>/dev/null | grep -E -- "-j $chain( |\$)" || true; } |
          sed 's/^-A /-D /' |
          while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null || true; done
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in "${new[@]}"; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
}

# ipsets that appeared while the node ran: the policy engine's (after its rules, which use
# them, are gone).
remove_new_ipsets() {
  local set
  command -v ipset >/dev/null || return 0
  ipset list -n 2>/dev/null | while read -r set; do
    grep -qxF "$set" "$RUN/before/ipsets" 2>/dev/null && continue
    ipset destroy "$set" 2>/dev/null || true
  done
}

# nft tables that appeared while the node ran: kube-proxy's, and the iptables-nft tables
# (nat, filter, mangle) if they hold no rule any more.
remove_new_nft_tables() {
  local line table
  # Without the nft tool (no nftables package) no table was made through it.
  command -v nft >/dev/null || return 0
  nft list tables 2>/dev/null | sort | while read -r line; do
    grep -qxF "$line" "$RUN/before/nft-tables" 2>/dev/null && continue
    # A line is "table FAMILY NAME", given to nft as three words; a rule is any line of the
    # listing that is not structure.
    read -ra table <<<"$line"
    if [[ "$line" == *kube* ]] || ! nft list "${table[@]}" 2>/dev/null |
      grep -vqE '^\s*(table|chain|type|policy|\}|$)'; then
      nft delete "${table[@]}" 2>/dev/null || true
    fi
  done
}

down() {
  [ -d "$RUN" ] || return 0
  local dir=""
  [ -f "$RUN/dir" ] && dir=$(cat "$RUN/dir")
  stop_proc kube-router
  stop_proc registry
  stop_proc coredns
  stop_proc kube-proxy
  stop_proc kubelet
  kill_pods
  kill_shims
  stop_proc containerd
  unmount_under "$RUN"
  [ -n "$dir" ] && unmount_under "$dir/node"
  remove_cgroups
  # kube-proxy's rules: its own clean-up, then what it leaves (empty KUBE-* chains, tables).
  if [ -f "$RUN/bin" ]; then "$(cat "$RUN/bin")/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  remove_new_chains
  remove_new_ipsets
  remove_new_nft_tables
  ip link del "$BRIDGE" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  # Sysctls back to what they were.
  local f name value
  for f in "$RUN"/before/sysctl.*; do
    [ -f "$f" ] || continue
    name=${f##*/sysctl.}
    value=$(cat "$f")
    [ "$(sysctl -n "$name" 2>/dev/null)" = "$value" ] || sysctl -qw "$name=$value" 2>/dev/null || true
  done
  # Log links the kubelet made for our containers.
  if [ -f "$RUN/before/no-containers-log-dir" ]; then
    rm -rf /var/log/containers
  elif [ -d /var/log/containers ]; then
    find -H /var/log/containers -mindepth 1 -maxdepth 1 ! -name '.*' -printf '%f\n' | while read -r f; do
      grep -qxF "$f" "$RUN/before/containers-logs" 2>/dev/null || rm -f "/var/log/containers/$f"
    done
  fi
  rm -rf "$RUN"
  [ -n "$dir" ] && rm -rf "$dir/node"
  return 0
}

cmd=${1:-}
case "$cmd" in
  check) check ;;
  net-up) net_up "$2" ;;
  start) start "$2" "$3" ;;
  down) down ;;
  *) echo "usage: tools/node.sh check | net-up DIR | start DIR BIN | down" >&2; exit 2 ;;
esac
