# k8s-lib.sh is sourced by scripts/k8s-up.sh and k8s-down.sh: the one-node
# cluster's names, paths, ports and ranges, and what it may change on the
# host (which k8s-up.sh records before changing it and k8s-down.sh
# restores). Callers define log().
set -euo pipefail

K8S_STATE=${K8S_STATE:-/var/lib/codegw-k8s}      # certificates, etcd, containerd's root, logs
K8S_RUN=${K8S_RUN:-/run/codegw-k8s}              # containerd's state and socket, runc's root
K8S_SOCK=$K8S_RUN/containerd/containerd.sock
# The private containerd's root (its image content and unpacked snapshots)
# outlives the cluster, like the built binaries: importing the images takes
# a minute or two and removing their unpacked files as long. k8s-down.sh
# deletes every container in it; K8S_KEEP_IMAGES=0 there removes it too.
K8S_IMAGES=${K8S_IMAGES:-/var/cache/codegw/k8s-containerd}
K8S_NODE=codegw-k8s
K8S_MARK=codegw-k8s # the comment on this cluster's own iptables rules

# 198.18.0.0/15 is reserved for benchmarks (RFC 2544) and routed nowhere:
# pods in its first half, services in its second.
K8S_RANGE=198.18.0.0/15
K8S_POD_CIDR=198.18.0.0/16
K8S_NODE_POD_CIDR=198.18.0.0/24
K8S_SVC_CIDR=198.19.0.0/16
K8S_SVC_FIRST=198.19.0.1 # the "kubernetes" service

K8S_API_PORT=16443
K8S_ETCD_PORT=12379
K8S_ETCD_PEER_PORT=12380
K8S_KUBELET_PORT=20250
K8S_KUBELET_HEALTHZ_PORT=20248
K8S_CM_PORT=20257
K8S_SCHED_PORT=20259
K8S_PROXY_METRICS_PORT=20249
K8S_PROXY_HEALTHZ_PORT=20256

K8S_PAUSE_DOCKER=codegw/k8s-pause:local
K8S_PAUSE_IMAGE=codegw.local/pause:1

# The components, in the order k8s-down.sh stops them.
K8S_COMPONENTS=(kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd containerd)

# Sysctls the cluster's parts may change (kubelet and kube-proxy set some
# on start), restored by k8s-down.sh.
K8S_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet
	vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.netfilter.nf_conntrack_max)

# Host paths the kubelet, containerd's CRI plugin and the CNI plugins use
# whatever they are told; removed by k8s-down.sh unless they were there
# before. Never the parent /run/containerd: the Docker engine's containerd
# lives there.
K8S_HOST_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/containerd/runc/k8s.io
	/run/netns /etc/cni /opt/cni /opt/containerd)
# Directories the Docker engine's containerd may use at the same time: the
# shims' sockets (containerd 1.6 puts every shim's socket in
# /run/containerd/s, whatever its state directory) and runc's root. Only our
# own files in them go, and the directory when it is empty and was not
# there before.
K8S_SHARED_DIRS=(/run/containerd/runc /run/containerd/s) # never /run/containerd itself

# running NAME tells whether component NAME, started by k8s-up.sh, runs.
running() {
	local pid
	pid=$(cat "$K8S_STATE/pids/$1" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}
