#!/usr/bin/env bash
# Build a real Kubernetes control plane for the tests from the Go module proxy (no container engine):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and helm, plus the Gateway API
# (standard channel) and Istio CRDs. Versions are pinned in tools/k8s/versions.env.
#
# Output (outside the repo so fresh clones on this machine reuse it):
#   ${MODSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modship}/k8s-<K8S>-etcd-<ETCD>-kwok-<KWOK>-helm-<HELM>/
#     bin/   etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm
#     crds/gateway-api/*.yaml  crds/istio/customresourcedefinitions.gen.yaml
#
# Idempotent: anything already present is skipped. Binaries are linked into a temp dir and moved
# into place, so an interrupted build never leaves a partial binary. The last line of stdout is the
# bin dir; progress goes to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"
: "${K8S:?}" "${ETCD:?}" "${KWOK:?}" "${HELM:?}" "${GATEWAY_API:?}" "${ISTIO_API:?}"

CACHE_ROOT=${MODSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modship}
ROOT="$CACHE_ROOT/k8s-$K8S-etcd-$ETCD-kwok-$KWOK-helm-$HELM"
BIN="$ROOT/bin"
CRDS="$ROOT/crds"
mkdir -p "$BIN" "$CRDS"

export CGO_ENABLED=0
# Never let a build rewrite the committed go.mod/go.sum of the wrapper modules.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"

log() { printf '[k8s-build] %s\n' "$*" >&2; }
die() { printf '[k8s-build] ERROR: %s\n' "$*" >&2; exit 1; }

TMP=$(mktemp -d "$ROOT/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM HUP # run the EXIT trap on interruption too

# go mod download -json reports failures per module (Path/Version/Error); name the first one.
# $1: directory of the main module; remaining args: module@version patterns (none = build list).
download() {
    local dir=$1; shift
    local out rc=0
    out=$(cd "$dir" && go mod download -json "$@" 2>"$TMP/download.err") || rc=$?
    if ((rc != 0)); then
        local bad
        bad=$(printf '%s\n' "$out" | jq -r 'select(.Error) | "\(.Path)@\(.Version): \(.Error)"' 2>/dev/null | head -n 5)
        [[ -n $bad ]] || bad=$(cat "$TMP/download.err")
        die "go mod download failed (in $dir${*:+ for $*}):
$bad"
    fi
    printf '%s\n' "$out"
}

# Directory of a module in the module cache (downloading it, failing fast with its name).
moddir() {
    download "$TMP" "$1" | jq -r '.Dir'
}
printf 'module tmp\n' >"$TMP/go.mod"

have() { [[ -x "$BIN/$1" ]]; }

# ---- kube-apiserver, kube-controller-manager, kube-scheduler ---------------------------------
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler)
missing=()
for c in "${K8S_CMDS[@]}"; do have "$c" || missing+=("$c"); done
if ((${#missing[@]})); then
    log "kubernetes $K8S: building ${missing[*]}"
    download "$HERE/k8sbins" >/dev/null
    k8s_info=$(download "$TMP" "k8s.io/kubernetes@$K8S" | jq -r '.Info')
    build_date=$(jq -r '.Time' "$k8s_info")
    ver=${K8S#v}
    major=${ver%%.*}
    rest=${ver#*.}
    minor=${rest%%.*}
    ldf="-s -w"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        ldf+=" -X $pkg.gitVersion=$K8S -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ldf+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
    done
    mkdir -p "$TMP/k8s"
    pkgs=()
    for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    (cd "$HERE/k8sbins" && go build -trimpath -ldflags "$ldf" -o "$TMP/k8s/" "${pkgs[@]}")
    for c in "${missing[@]}"; do mv -f "$TMP/k8s/$c" "$BIN/$c"; done
fi

# ---- etcd -------------------------------------------------------------------------------------
if ! have etcd; then
    log "etcd $ETCD: building"
    download "$HERE/etcd" >/dev/null
    (cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w" -o "$TMP/etcd" go.etcd.io/etcd/server/v3)
    mv -f "$TMP/etcd" "$BIN/etcd"
fi

# ---- kwok, helm (no replace directives: plain `go install mod@version`) -----------------------
# Pre-download the tool's whole build list from a copy of its go.mod to fail fast and by name.
install_tool() {
    local name=$1 mod=$2 ver=$3 pkg=$4 ldf=$5
    local dir
    dir=$(moddir "$mod@$ver")
    mkdir -p "$TMP/$name.mod" "$TMP/$name.bin"
    cp "$dir/go.mod" "$dir/go.sum" "$TMP/$name.mod/"
    chmod u+w "$TMP/$name.mod/"*
    download "$TMP/$name.mod" >/dev/null
    (cd "$TMP" && GOFLAGS= GOBIN="$TMP/$name.bin" go install -trimpath -ldflags "$ldf" "$pkg@$ver")
    mv -f "$TMP/$name.bin/$name" "$BIN/$name"
}

if ! have kwok; then
    log "kwok $KWOK: building"
    install_tool kwok sigs.k8s.io/kwok "$KWOK" sigs.k8s.io/kwok/cmd/kwok "-s -w"
fi

if ! have helm; then
    log "helm $HELM: building"
    k8s_ver=${K8S#v}
    k8s_major=${k8s_ver%%.*}
    k8s_rest=${k8s_ver#*.}
    k8s_minor=${k8s_rest%%.*}
    hldf="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        hldf+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
    done
    install_tool helm helm.sh/helm/v3 "$HELM" helm.sh/helm/v3/cmd/helm "$hldf"
fi

# ---- CRDs -------------------------------------------------------------------------------------
# Each CRD set is staged in a temp dir and renamed into place as a whole.
gw_dest="$CRDS/gateway-api"
if [[ ! -d $gw_dest ]]; then
    log "gateway-api $GATEWAY_API: copying standard-channel CRDs"
    src="$(moddir "sigs.k8s.io/gateway-api@$GATEWAY_API")/config/crd/standard"
    [[ -d $src ]] || die "sigs.k8s.io/gateway-api@$GATEWAY_API has no config/crd/standard"
    mkdir -p "$TMP/gw"
    n=0
    for f in "$src"/*.yaml; do
        # Keep CustomResourceDefinition files only (skips the ValidatingAdmissionPolicy one).
        if grep -q '^kind: CustomResourceDefinition' "$f" && ! grep -q '^kind: ValidatingAdmissionPolicy' "$f"; then
            cp "$f" "$TMP/gw/"
            n=$((n + 1))
        fi
    done
    ((n > 0)) || die "no CRDs found in $src"
    chmod -R u+w "$TMP/gw"
    mv "$TMP/gw" "$gw_dest"
fi

istio_dest="$CRDS/istio"
if [[ ! -d $istio_dest ]]; then
    log "istio.io/api $ISTIO_API: copying CRDs"
    src="$(moddir "istio.io/api@$ISTIO_API")/kubernetes/customresourcedefinitions.gen.yaml"
    [[ -f $src ]] || die "istio.io/api@$ISTIO_API has no kubernetes/customresourcedefinitions.gen.yaml"
    mkdir -p "$TMP/istio"
    cp "$src" "$TMP/istio/"
    chmod -R u+w "$TMP/istio"
    mv "$TMP/istio" "$istio_dest"
fi

# ---- sanity -----------------------------------------------------------------------------------
for c in etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm; do
    have "$c" || die "$BIN/$c missing after build"
done
got=$("$BIN/kube-apiserver" --version)
[[ $got == "Kubernetes $K8S" ]] || die "kube-apiserver --version printed '$got', expected 'Kubernetes $K8S'"

echo "$BIN"
