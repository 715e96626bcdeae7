#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, as envtest starts one, plus kwok for fake nodes:
# etcd, kube-apiserver, kube-controller-manager (all default controllers: Deployments,
# ReplicaSets, Jobs, garbage collection, HPA), kube-scheduler and kwok with one fake node.
# With --real-node, instead of the fake node: one real node (tools/node.sh: containerd, runc,
# a CNI bridge, kubelet, kube-proxy, CoreDNS, and the project's images), and the API server on
# the node's bridge address, so that pods reach it through the `kubernetes` Service. The real
# node's cluster also provisions volumes: a provisioner on the host (tools/provisioner) serves
# the default StorageClass `local`, a directory under DIR/volumes per claim, removed with it.
#
# Usage: tools/cluster.sh up   [DIR] [--owner-pid PID] [--real-node]
#                                      start; DIR defaults to target/testenv
#        tools/cluster.sh down [DIR]   stop exactly what `up` started, remove data
#
# `up` writes DIR/kubeconfig and returns once the node is Ready. Ports are picked free at start,
# so several copies (parallel tests) do not collide; a real node exists once per machine (see
# tools/node.sh). With --owner-pid the control plane is torn down when that process exits (test
# binaries that started their own).
#
# For benches at cluster scale (bench/scale.py), three environment variables; unset, the
# control plane is the one the tests see:
#   ABC_KWOK_POD_CAPACITY=N        the fake node holds N pods (default 250); above 250 kwok
#                                  hands out pod IPs from a /16 instead of a /24
#   ABC_CLUSTER_CLIENT_QPS=Q       client QPS (burst 2Q) of the controller-manager and the
#                                  scheduler, which otherwise create and bind 20 and 50 pods/s
#   ABC_CLUSTER_AUDIT_POLICY=FILE  the API server writes an audit log (DIR/logs/audit.log,
#                                  JSON lines) under this policy: who sent which request
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cmd=${1:-}
shift || true
dir=$root/target/testenv
owner=""
real_node=false
while [ $# -gt 0 ]; do
  case "$1" in
    --owner-pid) owner=$2; shift 2 ;;
    --real-node) real_node=true; shift ;;
    *) dir=$1; shift ;;
  esac
done
mkdir -p "$(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")

down() {
  [ -d "$dir" ] || return 0
  # Stop in reverse start order; only the pids this script recorded.
  for name in provisioner kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pidfile=$dir/pids/$name
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
  done
  for name in provisioner kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pidfile=$dir/pids/$name
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
  # The real node, if this control plane has it.
  if [ -f /run/abc-node/dir ] && [ "$(cat /run/abc-node/dir)" = "$dir" ]; then
    "$here/node.sh" down
  fi
  if [ -f "$dir/pids/reaper" ] && [ "$(cat "$dir/pids/reaper")" != "$PPID" ]; then
    kill "$(cat "$dir/pids/reaper")" 2>/dev/null || true
  fi
  rm -rf "$dir"
}

if [ "$cmd" = "down" ]; then
  down
  exit 0
fi
if [ "$cmd" != "up" ]; then
  echo "usage: tools/cluster.sh up|down [DIR] [--owner-pid PID] [--real-node]" >&2
  exit 2
fi

if [ -f "$dir/kubeconfig" ] && [ -f "$dir/pids/kube-apiserver" ] && kill -0 "$(cat "$dir/pids/kube-apiserver")" 2>/dev/null; then
  echo "control plane already running; kubeconfig: $dir/kubeconfig"
  exit 0
fi
down

bin=$("$here/build.sh")
stages=$(dirname "$bin")/kwok-stages.yaml
mkdir -p "$dir"/{pids,logs,pki,etcd}

# The API server's address: loopback, or the real node's bridge address (which must exist
# before the API server binds to it) so that pods reach it too.
api_ip=127.0.0.1
san=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc
if [ "$real_node" = true ]; then
  "$here/node.sh" net-up "$dir" || { rm -rf "$dir"; exit 1; }
  api_ip=10.244.0.1
  # Pods reach it as the `kubernetes` Service's first address and by its DNS names.
  san=$san,IP:$api_ip,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc.cluster.local
fi

fail() {
  echo "tools/cluster.sh: $1 failed to start; its log follows" >&2
  tail -n 15 "$dir/logs/$1.log" >&2 || true
  # Keep the logs for the user; stop the processes.
  cp -r "$dir/logs" "$dir.failed-logs" 2>/dev/null || true
  down
  echo "tools/cluster.sh: logs kept in $dir.failed-logs" >&2
  exit 1
}

pod_capacity=${ABC_KWOK_POD_CAPACITY:-250}
pod_cidr=10.0.0.1/24
[ "$pod_capacity" -gt 250 ] && pod_cidr=10.0.0.1/16
client_qps=()
if [ -n "${ABC_CLUSTER_CLIENT_QPS:-}" ]; then
  client_qps=(--kube-api-qps "$ABC_CLUSTER_CLIENT_QPS" --kube-api-burst "$((ABC_CLUSTER_CLIENT_QPS * 2))")
fi
audit=()
if [ -n "${ABC_CLUSTER_AUDIT_POLICY:-}" ]; then
  audit=(--audit-policy-file "$ABC_CLUSTER_AUDIT_POLICY" --audit-log-path "$dir/logs/audit.log" --audit-log-format json)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
kcm_port=$(free_port); sched_port=$(free_port); kwok_port=$(free_port)

start() { # name args...
  local name=$1; shift
  "$@" >"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name"
}

# --- PKI: a CA, the API server's serving cert, an admin client cert, service-account keys,
# and a front-proxy CA for the aggregation layer (external metrics API later).
pki=$dir/pki
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 365 -subj "/CN=abc-testenv-ca" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 365 -subj "/CN=abc-testenv-front-proxy-ca" 2>/dev/null
  # X.509 v3 extensions on every leaf: rustls (the Rust clients) refuses v1 certificates.
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" >san.ext
  printf "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n" >client.ext
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 365 -extfile san.ext 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=abc-testenv-admin" 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 365 -extfile client.ext 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr -subj "/CN=front-proxy-client" 2>/dev/null
  openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial -out front-proxy-client.crt -days 365 -extfile client.ext 2>/dev/null
  # The API server's client identity towards kubelets (logs, exec, port-forward).
  openssl req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
  openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kubelet-client.crt -days 365 -extfile client.ext 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
) || { echo "tools/cluster.sh: creating certificates with openssl failed" >&2; rm -rf "$dir"; exit 1; }

kubeconfig=$dir/kubeconfig
cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: abc-testenv
  cluster:
    server: https://$api_ip:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: abc-testenv
  context: {cluster: abc-testenv, user: admin, namespace: default}
current-context: abc-testenv
EOF

start etcd "$bin/etcd" --name default --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync --quota-backend-bytes 2147483648

start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address "$api_ip" --advertise-address "$api_ip" --secure-port "$api_port" \
  --cert-dir "$pki" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
  --requestheader-client-ca-file "$pki/front-proxy-ca.crt" \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
  --kubelet-client-certificate "$pki/kubelet-client.crt" --kubelet-client-key "$pki/kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP,Hostname ${audit[@]+"${audit[@]}"}

kubectl=("$bin/kubectl" --kubeconfig "$kubeconfig")
for i in $(seq 600); do
  kill -0 "$(cat "$dir/pids/etcd")" 2>/dev/null || fail etcd
  kill -0 "$(cat "$dir/pids/kube-apiserver")" 2>/dev/null || fail kube-apiserver
  "${kubectl[@]}" get --raw /readyz >/dev/null 2>&1 && break
  [ "$i" = 600 ] && fail kube-apiserver
  sleep 0.2
done

start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$kubeconfig" --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
  --controllers '*' --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials=false --horizontal-pod-autoscaler-sync-period 5s \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  ${client_qps[@]+"${client_qps[@]}"}

start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig "$kubeconfig" --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false \
  ${client_qps[@]+"${client_qps[@]}"}

if [ "$real_node" = true ]; then
  if ! "$here/node.sh" start "$dir" "$bin"; then
    cp -r "$dir/logs" "$dir.failed-logs" 2>/dev/null || true
    down
    echo "tools/cluster.sh: the real node failed to start (above); logs kept in $dir.failed-logs" >&2
    exit 1
  fi
  # Dynamic provisioning for claims that name no class, as on a real cluster. The node is this
  # machine, so the provisioner runs here and makes each volume's directory itself. A local
  # volume waits for its pod's node (WaitForFirstConsumer) and goes with its claim (Delete).
  start provisioner "$bin/provisioner" -kubeconfig "$kubeconfig" -dir "$dir/volumes" -node abc-node-0
  "${kubectl[@]}" apply -f - >/dev/null <<EOF || fail kube-apiserver
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: abc-operator.dev/local
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
  for i in $(seq 300); do
    kill -0 "$(cat "$dir/pids/provisioner")" 2>/dev/null || fail provisioner
    grep -q "Started provisioner controller" "$dir/logs/provisioner.log" && break
    [ "$i" = 300 ] && fail provisioner
    sleep 0.2
  done
else
start kwok "$bin/kwok" --kubeconfig "$kubeconfig" --config "$stages" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --manage-nodes-with-label-selector= --disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom \
  --cidr="$pod_cidr" --node-ip=10.0.0.1 --server-address "127.0.0.1:$kwok_port"

"${kubectl[@]}" apply -f - >/dev/null <<EOF || fail kube-apiserver
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "64", memory: 256Gi, pods: "$pod_capacity"}
  capacity: {cpu: "64", memory: 256Gi, pods: "$pod_capacity"}
EOF

for i in $(seq 600); do
  for name in kube-controller-manager kube-scheduler kwok; do
    kill -0 "$(cat "$dir/pids/$name")" 2>/dev/null || fail "$name"
  done
  status=$("${kubectl[@]}" get node kwok-node-0 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
  [ "$status" = "True" ] && break
  [ "$i" = 600 ] && fail kwok
  sleep 0.2
done
fi

if [ -n "$owner" ]; then
  # Tear down when the owning process exits; detached so it outlives this script.
  nohup bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done; '$here/cluster.sh' down '$dir'" \
    >/dev/null 2>&1 &
  echo $! >"$dir/pids/reaper"
fi

if [ "$real_node" = true ]; then
  echo "control plane up; real node abc-node-0 Ready; default StorageClass local"
else
  echo "control plane up; node kwok-node-0 Ready"
fi
echo "export KUBECONFIG=$kubeconfig"
