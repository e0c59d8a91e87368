#!/usr/bin/env bash
# k8s-up.sh runs a one-node Kubernetes cluster on this machine, with nothing
# pulled from a registry, and imports the project's images into it:
#
#   binaries     scripts/k8s-build.sh (from the Go module proxy, cached)
#   runtime      a private containerd (Debian's): its own config, root, state
#                and socket under $K8S_STATE and $K8S_RUN, never the Docker
#                engine's containerd or /run/containerd
#   control      etcd on loopback, kube-apiserver on this machine's address
#                (a loopback endpoint is refused), controller-manager and
#                scheduler without leader election
#   node         kubelet (cgroupfs, cgroup v1 allowed) and kube-proxy
#                (iptables); pods 198.18.0.0/16 (this node: 198.18.0.0/24)
#                and services 198.19.0.0/16, both from 198.18.0.0/15, which is
#                reserved for benchmarks and routed nowhere; DROP rules in
#                mangle POSTROUTING keep every packet from or to those ranges
#                off the default interface
#   images       a static pause image built here; the api, executor and Redis
#                images from the local Docker engine (scripts/docker-up.sh and
#                scripts/compose-check.sh build them)
#
# It prints the environment to use the cluster (KUBECONFIG, K8S_BIN, ...) on
# stdout, like scripts/redis-up.sh: eval "$(scripts/k8s-up.sh)". It is
# idempotent: a running cluster is reused (its images re-imported when they
# changed). scripts/k8s-down.sh removes everything it made.
#
# Environment: K8S_API_IMAGE (codegw/api:latest), K8S_EXECUTOR_IMAGE
# (codegw/executor:latest), K8S_REDIS_IMAGE (codegw/redis:local),
# K8S_NO_IMAGES=1 (start the cluster only).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
log() { printf 'k8s-up: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=k8s-lib.sh
. scripts/k8s-lib.sh

[[ $(id -u) == 0 ]] || die "needs root (a kubelet, containerd, iptables)"
begin=$SECONDS

# Debian packages (scripts/deps.sh installs them): containerd (a private
# instance), runc, the CNI plugins, iptables, conntrack (kube-proxy), openssl
# and gcc (certificates, the pause image).
for p in containerd runc containernetworking-plugins iptables conntrack openssl gcc libc6-dev; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || die "package $p is missing: run scripts/deps.sh"
done

bin=$(scripts/k8s-build.sh)
mkdir -p "$K8S_STATE"/{pki,logs,pids,etcd,kubelet,pod-logs,cni/net.d,cni/ipam,containerd} "$K8S_RUN"
echo "$bin" >"$K8S_STATE/bin"

node_ip=$(ip -4 -o addr show scope global | awk '{split($4, a, "/"); print a[1]; exit}')
default_if=$(ip route show default | awk '{print $5; exit}')
[[ -n $node_ip && -n $default_if ]] || die "no global IPv4 address or default route"

# What this script changes outside its own directories is recorded once,
# before the first change, for k8s-down.sh.
if [[ ! -f $K8S_STATE/before ]]; then
	{
		for s in "${K8S_SYSCTLS[@]}"; do
			v=$(sysctl -n "$s" 2>/dev/null) && printf 'sysctl %s %s\n' "$s" "${v//$'\t'/ }"
		done
		for p in "${K8S_HOST_PATHS[@]}" "${K8S_SHARED_DIRS[@]}"; do [[ -e $p ]] && printf 'path %s\n' "$p"; done
		for n in /run/netns/*; do [[ -e $n ]] && printf 'netns %s\n' "$n"; done
		true
	} >"$K8S_STATE/before.tmp"
	mv "$K8S_STATE/before.tmp" "$K8S_STATE/before"
fi

# Keep every packet of the cluster on this machine. In mangle POSTROUTING
# the output interface is the final one (after kube-proxy's DNAT).
for r in "-s $K8S_RANGE" "-d $K8S_RANGE"; do
	# shellcheck disable=SC2086
	iptables -t mangle -C POSTROUTING -o "$default_if" $r -m comment --comment "$K8S_MARK" -j DROP 2>/dev/null ||
		iptables -t mangle -A POSTROUTING -o "$default_if" $r -m comment --comment "$K8S_MARK" -j DROP
done
sysctl -q -w net.ipv4.ip_forward=1
[[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -q -w net.bridge.bridge-nf-call-iptables=1

# --- certificates (a CA, the apiserver's, one admin client for all) ---------
pki=$K8S_STATE/pki
if [[ ! -f $pki/admin.crt ]]; then
	log "making certificates"
	(
		cd "$pki"
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=codegw-k8s-ca 2>/dev/null
		cat >apiserver.ext <<-EXT
			subjectAltName=IP:$node_ip,IP:127.0.0.1,IP:$K8S_SVC_FIRST,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
			extendedKeyUsage=serverAuth
		EXT
		openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
		openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 30 -extfile apiserver.ext 2>/dev/null
		printf 'extendedKeyUsage=clientAuth\n' >client.ext
		openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=codegw-admin" 2>/dev/null
		openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 30 -extfile client.ext 2>/dev/null
		openssl genrsa -out sa.key 2048 2>/dev/null
		openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	)
fi
kubeconfig=$K8S_STATE/kubeconfig
cat >"$kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: codegw
  cluster: {server: "https://$node_ip:$K8S_API_PORT", certificate-authority: "$pki/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$pki/admin.crt", client-key: "$pki/admin.key"}
contexts:
- name: codegw
  context: {cluster: codegw, user: admin}
current-context: codegw
KC

# --- containerd (private), the CNI bridge ----------------------------------
cat >"$K8S_STATE/containerd/config.toml" <<TOML
version = 2
root = "$K8S_IMAGES"
state = "$K8S_RUN/containerd"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$K8S_SOCK"
[ttrpc]
  address = "$K8S_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$K8S_STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$K8S_PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$K8S_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$K8S_STATE/cni/net.d"
TOML
cat >"$K8S_STATE/cni/net.d/10-codegw.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "codegw",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$K8S_STATE/cni/ipam",
              "ranges": [[{"subnet": "$K8S_NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI

# start NAME CMD... runs a component in its own session, logging to
# logs/NAME.log, unless it runs already.
start() {
	local name=$1
	shift
	if running "$name"; then return 0; fi
	setsid "$@" </dev/null >>"$K8S_STATE/logs/$name.log" 2>&1 &
	echo $! >"$K8S_STATE/pids/$name"
}
# wait_for WHAT SECONDS CMD... retries CMD until it succeeds.
wait_for() {
	local what=$1 secs=$2 i
	shift 2
	for ((i = 0; i < secs * 10; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "$what did not come up within ${secs}s (logs: $K8S_STATE/logs)"
}

start containerd containerd --config "$K8S_STATE/containerd/config.toml"
wait_for containerd 30 ctr -a "$K8S_SOCK" version
# Containers a cluster that ended badly left in the kept root: none may
# look like this cluster's to the kubelet.
if ! running kubelet; then
	for c in $(ctr -a "$K8S_SOCK" -n k8s.io containers ls -q); do
		ctr -a "$K8S_SOCK" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
		ctr -a "$K8S_SOCK" -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
	done
fi

start etcd "$bin/etcd" --name codegw --data-dir "$K8S_STATE/etcd" \
	--listen-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
	--initial-cluster "codegw=http://127.0.0.1:$K8S_ETCD_PEER_PORT" --log-level warn
start kube-apiserver "$bin/kube-apiserver" --advertise-address "$node_ip" --bind-address "$node_ip" --secure-port "$K8S_API_PORT" \
	--etcd-servers "http://127.0.0.1:$K8S_ETCD_PORT" --service-cluster-ip-range "$K8S_SVC_CIDR" \
	--client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
	--kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
	--service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
	--service-account-issuer https://kubernetes.default.svc --authorization-mode Node,RBAC \
	--kubelet-preferred-address-types InternalIP --allow-privileged=true --profiling=false --v=1
wait_for kube-apiserver 90 "$bin/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz
start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$kubeconfig" --leader-elect=false \
	--allocate-node-cidrs --cluster-cidr "$K8S_POD_CIDR" --node-cidr-mask-size 24 --service-cluster-ip-range "$K8S_SVC_CIDR" \
	--service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" --use-service-account-credentials=false \
	--bind-address 127.0.0.1 --secure-port "$K8S_CM_PORT" --profiling=false
start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$kubeconfig" --leader-elect=false \
	--bind-address 127.0.0.1 --secure-port "$K8S_SCHED_PORT" --profiling=false

cat >"$K8S_STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$node_ip"
port: $K8S_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $K8S_KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: "unix://$K8S_SOCK"
podCIDR: "$K8S_NODE_POD_CIDR"
podLogsDir: "$K8S_STATE/pod-logs"
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
maxPods: 60
YAML
start kubelet "$bin/kubelet" --config "$K8S_STATE/kubelet.yaml" --kubeconfig "$kubeconfig" \
	--root-dir "$K8S_STATE/kubelet" --hostname-override "$K8S_NODE" --node-ip "$node_ip" --v=1
start kube-proxy "$bin/kube-proxy" --kubeconfig "$kubeconfig" --proxy-mode iptables --cluster-cidr "$K8S_POD_CIDR" \
	--hostname-override "$K8S_NODE" --metrics-bind-address "127.0.0.1:$K8S_PROXY_METRICS_PORT" \
	--healthz-bind-address "127.0.0.1:$K8S_PROXY_HEALTHZ_PORT" --conntrack-max-per-core 0 \
	--conntrack-tcp-timeout-established 0s --conntrack-tcp-timeout-close-wait 0s

kc() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

# --- images -------------------------------------------------------------------
# The pause image: a static loop on pause(), imported through Docker's image
# format, like the project's images.
pause_rootfs() {
	local d
	d=$(mktemp -d)
	printf '#include <unistd.h>\n#include <signal.h>\nstatic void f(int s){(void)s;_exit(0);}\nint main(void){signal(SIGINT,f);signal(SIGTERM,f);for(;;)pause();}\n' >"$d/pause.c"
	gcc -static -O2 -o "$d/pause" "$d/pause.c" && tar -C "$d" -c pause
	rm -rf "$d"
}
# import_k8s IMAGE [K8S_NAME] imports a Docker image into the cluster's
# containerd (namespace k8s.io) when its id changed since the last import.
import_k8s() {
	local img=$1 name=${2:-$1} id stamp have
	id=$(docker image inspect -f '{{.Id}}' "$img" 2>/dev/null) || die "image $img is missing"
	stamp=$K8S_IMAGES/codegw-imported/$(printf '%s' "$name" | tr '/:' '__')
	mkdir -p "$K8S_IMAGES/codegw-imported"
	# The listing first: grep -q would end the pipe early (SIGPIPE, and
	# pipefail would take the image for missing).
	have=$(ctr -a "$K8S_SOCK" -n k8s.io images ls -q)
	if [[ $(cat "$stamp" 2>/dev/null) == "$id" ]] && grep -qx "docker.io/$name\|$name" <<<"$have"; then
		return 0
	fi
	log "importing $img as $name"
	ctr -a "$K8S_SOCK" -n k8s.io images rm "$name" "docker.io/$name" >/dev/null 2>&1 || true
	[[ $img == "$name" ]] || docker tag "$img" "$name"
	docker save "$name" | ctr -a "$K8S_SOCK" -n k8s.io images import - >/dev/null
	[[ $img == "$name" ]] || docker image rm "$name" >/dev/null
	echo "$id" >"$stamp"
}
. scripts/lib.sh
pause_hash=$(printf 'pause v1\n' | inputs_hash)
if [[ $(image_label "$K8S_PAUSE_DOCKER") != "$pause_hash" ]]; then
	tar=$(mktemp /tmp/codegw-pause.XXXXXX.tar)
	pause_rootfs >"$tar" || { rm -f "$tar"; die "building the pause image failed"; }
	docker import --change "LABEL $HASH_LABEL=$pause_hash" --change 'ENTRYPOINT ["/pause"]' "$tar" "$K8S_PAUSE_DOCKER" >/dev/null
	rm -f "$tar"
fi
import_k8s "$K8S_PAUSE_DOCKER" "$K8S_PAUSE_IMAGE"
if [[ ${K8S_NO_IMAGES:-0} != 1 ]]; then
	import_k8s "${K8S_API_IMAGE:-codegw/api:latest}" codegw.local/api:latest
	import_k8s "${K8S_EXECUTOR_IMAGE:-codegw/executor:latest}" codegw.local/executor:latest
	import_k8s "${K8S_REDIS_IMAGE:-codegw/redis:local}" codegw.local/redis:latest
fi

wait_for "node $K8S_NODE Ready" 120 sh -c "'$bin/kubectl' --kubeconfig '$kubeconfig' get node '$K8S_NODE' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
wait_for "the default service account" 60 kc get serviceaccount default
log "cluster up in $((SECONDS - begin))s: node $K8S_NODE ($node_ip), api https://$node_ip:$K8S_API_PORT"
printf 'export KUBECONFIG=%q\nexport K8S_BIN=%q\nexport K8S_NODE_IP=%q\nexport PATH="$K8S_BIN:$PATH"\n' "$kubeconfig" "$bin" "$node_ip"
