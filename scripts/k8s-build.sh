#!/usr/bin/env bash
# k8s-build.sh builds, from the Go module proxy, the binaries of a one-node
# Kubernetes cluster (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy, kubectl), etcd and helm, into a cache directory outside
# the repository, and prints that directory's bin/ on stdout. The directory is
# named for the versions and the hash of this script, so a changed recipe
# builds anew and an unchanged one is reused in milliseconds.
#
# The kubernetes module zip lacks its staging/ tree: the module is copied out
# of the module cache, its vendor/ and go.work are removed, and each
# `replace k8s.io/X => ./staging/src/k8s.io/X` is rewritten to the published
# k8s.io/X at the matching v0.minor.patch, built with -mod=mod.
#
# Environment: K8S_VERSION (v1.36.3), ETCD_VERSION (v3.6.16), HELM_VERSION
# (v4.3.2), K8S_CACHE (/var/cache/codegw), FRESH=1 rebuilds.
set -euo pipefail
log() { printf 'k8s-build: %s\n' "$*" >&2; }
export PATH=$PATH:/usr/local/go/bin

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v4.3.2}
K8S_CACHE=${K8S_CACHE:-/var/cache/codegw}
hash=$(printf '%s %s %s\n' "$K8S_VERSION" "$ETCD_VERSION" "$HELM_VERSION" | cat - "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)
dir=$K8S_CACHE/k8s-$K8S_VERSION-$hash
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd helm)

complete() {
	local b
	for b in "${bins[@]}"; do [[ -x $dir/bin/$b ]] || return 1; done
}
if [[ ${FRESH:-0} != 1 ]] && complete; then
	echo "$dir/bin"
	exit 0
fi

mkdir -p "$K8S_CACHE"
work=$dir.work
rm -rf "$work"
mkdir -p "$work/bin"
staging=v0.${K8S_VERSION#v1.}

log "downloading k8s.io/kubernetes@$K8S_VERSION"
src=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d $src ]] || { log "no module directory for k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
cp -r "$src" "$work/kubernetes"
chmod -R u+w "$work/kubernetes"
cd "$work/kubernetes"
rm -rf vendor go.work go.work.sum
sed -i -E "s#=> \./staging/src/(k8s\.io/[^[:space:]]+)#=> \1 $staging#" go.mod
grep -q '\./staging' go.mod && { log "go.mod still names ./staging"; exit 1; }

log "building kubernetes $K8S_VERSION (first time: 7-14 min on 2 cores)"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
	log "  $b"
	CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" -o "$work/bin/$b" "./cmd/$b"
done

log "building etcd $ETCD_VERSION"
mkdir -p "$work/etcd" && cd "$work/etcd"
go mod init codegw.local/etcdbuild >/dev/null 2>&1
GOFLAGS=-mod=mod go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w" -o "$work/bin/etcd" go.etcd.io/etcd/server/v3

log "building helm $HELM_VERSION"
mkdir -p "$work/helm" && cd "$work/helm"
go mod init codegw.local/helmbuild >/dev/null 2>&1
GOFLAGS=-mod=mod go get "helm.sh/helm/v4@$HELM_VERSION" >/dev/null 2>&1
CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w" -o "$work/bin/helm" helm.sh/helm/v4/cmd/helm

rm -rf "$dir"
mkdir -p "$dir"
mv "$work/bin" "$dir/bin"
cd /
rm -rf "$work"
complete || { log "a binary is missing in $dir/bin"; exit 1; }
log "built into $dir/bin"
echo "$dir/bin"
