#!/usr/bin/env bash
# Build a kind node image offline: nothing is pulled from a container registry.
#   Go module proxy: kind, kubelet/kubeadm/kubectl/kube-proxy (v1.34.4, one `go build`), coredns;
#                    kube-apiserver/-controller-manager/-scheduler and etcd are reused from
#                    tools/k8s/build.sh (never rebuilt here).
#   gcc:             pause (Kubernetes' build/pause/linux/pause.c).
#   Debian mirror:   debootstrap root filesystems for kube-proxy and the node (systemd, containerd,
#                    runc, CNI plugins from bookworm).
#   docker:          component images (docker import), kind's base image (kind's files/ over the
#                    Debian node rootfs), and the node image with every image kubeadm needs
#                    preloaded in its containerd (kind's `build node-image` would pull them).
# See docs/plans/kind.md for why each step is done this way.
#
# Needs: root, the private dockerd of tools/kind/host-setup.sh (DOCKER_HOST defaults to it),
# debootstrap, jq, zstd, gcc + libc6-dev, go.
#
# Cache (outside the repo, so fresh clones on this machine reuse it):
#   $CACHE/kind-<KIND>-k8s-<K8S>/bin/      kind kubelet kubeadm kubectl kube-proxy coredns pause smoke-<source h12>
#   $CACHE/kind-<KIND>-k8s-<K8S>/images/   component images as `docker save` archives
#   $CACHE/kind-<KIND>-k8s-<K8S>/node-<H>.ref   node image tag, written last (the "done" stamp)
#   $CACHE/debootstrap/<suite>-<name>-<h8>.tar.zst   root filesystems
# H hashes the versions and tools/kind/* (this script, configs, runc wrapper): editing them makes
# a new base and node image, while binaries, archives and root filesystems are kept.
#
# Idempotent. Progress goes to stderr; the last line of stdout is the node image tag.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=../k8s/versions.env
source "$REPO/tools/k8s/versions.env"
# shellcheck source=versions.env
source "$HERE/versions.env"
: "${K8S:?}" "${ETCD:?}" "${KIND:?}" "${COREDNS:?}" "${PAUSE:?}" "${DEBIAN_SUITE:?}"

CACHE_ROOT=${MODSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modship}
ROOT="$CACHE_ROOT/kind-$KIND-k8s-$K8S"
BIN="$ROOT/bin"
IMAGES="$ROOT/images"
ROOTFS="$CACHE_ROOT/debootstrap"
mkdir -p "$BIN" "$IMAGES" "$ROOTFS"

export DOCKER_HOST=${DOCKER_HOST:-unix:///run/modship-docker.sock}
export DOCKER_BUILDKIT=0
MIRROR=${MODSHIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ETCD_TAG="${ETCD#v}-0"
KMOD_DIR="$REPO/tools/k8s/k8sbins"

log() { printf '[kind-build] %s\n' "$*" >&2; }
die() { printf '[kind-build] ERROR: %s\n' "$*" >&2; exit 1; }
step() { # step NAME: log the start; `done_step` logs the elapsed seconds
    STEP_NAME=$1
    STEP_T0=$(date +%s)
    log "$1 ..."
}
done_step() { log "$STEP_NAME: done in $(($(date +%s) - STEP_T0)) s"; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot)"
for tool in go jq zstd gcc debootstrap docker; do
    command -v "$tool" >/dev/null || die "$tool not found (run tools/kind/host-setup.sh)"
done
docker info >/dev/null 2>&1 || die "no docker daemon at $DOCKER_HOST (run tools/kind/host-setup.sh)"

TMP=$(mktemp -d "$ROOT/.tmp.XXXXXX")
cid=
kp_job=
node_job=
cleanup() {
    [[ -z $cid ]] || docker rm -f -v "$cid" >/dev/null 2>&1 || true
    for job in $kp_job $node_job; do wait "$job" 2>/dev/null || true; done # before their dirs go
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

have() { [[ -x "$BIN/$1" ]]; }
moddir() { (cd "$TMP" && GOFLAGS= go mod download -json "$1") | jq -r '.Dir // error(.Error)'; }
printf 'module tmp\n' >"$TMP/go.mod"

# ---- Debian root filesystems ------------------------------------------------------------------
KP_PKGS=iptables,nftables,conntrack,ca-certificates
NODE_PKGS=systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz
NODE_PKGS+=,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins

rootfs() { # rootfs NAME PKGS: prints the path of the cached tar.zst, building it if missing
    local name=$1 pkgs=$2 h out
    h=$(printf '%s %s %s' "$DEBIAN_SUITE" "$name" "$pkgs" | sha256sum | cut -c1-8)
    out="$ROOTFS/$DEBIAN_SUITE-$name-$h.tar.zst"
    if [[ ! -f $out ]]; then
        step "debootstrap $DEBIAN_SUITE $name"
        local dir="$TMP/rootfs-$name"
        debootstrap --variant=minbase --include="$pkgs" "$DEBIAN_SUITE" "$dir" "$MIRROR" >"$TMP/debootstrap-$name.log" 2>&1 ||
            die "debootstrap $name failed: $(tail -n 5 "$TMP/debootstrap-$name.log")"
        rm -rf "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/* "$dir"/usr/share/{doc,man,info}/*
        tar -C "$dir" --numeric-owner -c . | zstd -q -T0 -o "$out.tmp"
        mv -f "$out.tmp" "$out"
        rm -rf "$dir"
        done_step
    fi
    printf '%s\n' "$out"
}
# Started now, collected after the Go builds: debootstrap waits on the mirror, go build on the CPU.
rootfs kp "$KP_PKGS" >"$TMP/kp.path" &
kp_job=$!
rootfs node "$NODE_PKGS" >"$TMP/node.path" &
node_job=$!

# ---- Go binaries ------------------------------------------------------------------------------
# The control-plane binaries of the kwok suite (a no-op when cached): the node image reuses them.
CP_BIN=$("$REPO/tools/k8s/build.sh" | tail -n 1)

export CGO_ENABLED=0
NODE_CMDS=(kubelet kubeadm kubectl kube-proxy)
missing=()
for c in "${NODE_CMDS[@]}"; do have "$c" || missing+=("$c"); done
if ((${#missing[@]})); then
    step "kubernetes $K8S: building ${missing[*]} (one go build)"
    # The same version ldflags as tools/k8s/build.sh: kubeadm refuses a v0.0.0-master kubelet.
    build_date=$(jq -r '.Time' "$(cd "$KMOD_DIR" && GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S" | jq -r .Info)")
    ver=${K8S#v} && major=${ver%%.*} && rest=${ver#*.} && minor=${rest%%.*}
    ldf="-s -w"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        ldf+=" -X $pkg.gitVersion=$K8S -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ldf+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
    done
    pkgs=()
    for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    mkdir -p "$TMP/k8s"
    (cd "$KMOD_DIR" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "$ldf" -o "$TMP/k8s/" "${pkgs[@]}")
    for c in "${missing[@]}"; do mv -f "$TMP/k8s/$c" "$BIN/$c"; done
    done_step
fi

go_install() { # go_install NAME MODULE@VERSION/PKG... LDFLAGS: no replace directives in these modules
    local name=$1 pkg=$2 ldf=$3
    step "$name: go install $pkg"
    mkdir -p "$TMP/$name.bin"
    (cd "$TMP" && GOFLAGS= GOBIN="$TMP/$name.bin" go install -trimpath -ldflags "$ldf" "$pkg")
    mv -f "$TMP/$name.bin/$name" "$BIN/$name"
    done_step
}
have kind || go_install kind "sigs.k8s.io/kind@$KIND" "-s -w"
have coredns || go_install coredns "github.com/coredns/coredns@$COREDNS" \
    "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS"

if ! have pause; then
    step "pause $PAUSE: gcc -static (build/pause/linux/pause.c of k8s.io/kubernetes@$K8S)"
    src="$(cd "$KMOD_DIR" && GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S" | jq -r .Dir)/build/pause/linux/pause.c"
    gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE-modship" -o "$TMP/pause" "$src"
    mv -f "$TMP/pause" "$BIN/pause"
    done_step
fi

got=$("$BIN/kubelet" --version)
[[ $got == "Kubernetes $K8S" ]] || die "kubelet --version printed '$got', expected 'Kubernetes $K8S'"
got=$("$BIN/kubeadm" version -o short)
[[ $got == "$K8S" ]] || die "kubeadm version printed '$got', expected '$K8S'"

wait "$kp_job" || die "debootstrap kp failed"
wait "$node_job" || die "debootstrap node failed"
KP_ROOTFS=$(cat "$TMP/kp.path")
NODE_ROOTFS=$(cat "$TMP/node.path")

# ---- component images (registry.k8s.io tags that kubeadm v1.34.4 expects) ---------------------
# A minimal root: passwd/group (root, nonroot 65532, pause's 65535), /tmp and CA certificates.
static_root() { # static_root DIR
    local d=$1
    mkdir -p "$d/etc/ssl/certs" "$d/tmp" "$d/usr/local/bin"
    chmod 1777 "$d/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$d/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\nnogroup:x:65534:\n' >"$d/etc/group"
    printf 'hosts: files dns\n' >"$d/etc/nsswitch.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$d/etc/ssl/certs/"
}
PATH_ENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

component() { # component FILE TAG BINARY DEST [docker import --change ...]
    local file=$1 tag=$2 bin=$3 dest=$4
    shift 4
    [[ -f "$IMAGES/$file.tar" ]] && return 0
    step "image $tag"
    local d="$TMP/img-$file"
    mkdir -p "$d"
    if [[ $file == kube-proxy ]]; then
        zstd -q -d -c "$KP_ROOTFS" | tar -C "$d" -x
    else
        static_root "$d"
    fi
    install -D -m755 "$bin" "$d$dest"
    local changes=(--change "$PATH_ENV")
    for c in "$@"; do changes+=(--change "$c"); done
    tar -C "$d" --numeric-owner -c . | docker import "${changes[@]}" - "$tag" >/dev/null
    docker save -o "$IMAGES/$file.tar.tmp" "$tag"
    mv -f "$IMAGES/$file.tar.tmp" "$IMAGES/$file.tar"
    rm -rf "$d"
    done_step
}
R=registry.k8s.io
for c in kube-apiserver kube-controller-manager kube-scheduler; do
    component "$c" "$R/$c:$K8S" "$CP_BIN/$c" "/usr/local/bin/$c"
done
component etcd "$R/etcd:$ETCD_TAG" "$CP_BIN/etcd" /usr/local/bin/etcd
component kube-proxy "$R/kube-proxy:$K8S" "$BIN/kube-proxy" /usr/local/bin/kube-proxy
component coredns "$R/coredns/coredns:$COREDNS" "$BIN/coredns" /coredns 'ENTRYPOINT ["/coredns"]'
component pause "$R/pause:$PAUSE" "$BIN/pause" /pause 'USER 65535:65535' 'ENTRYPOINT ["/pause"]'
EXPECTED=("$R/kube-apiserver:$K8S" "$R/kube-controller-manager:$K8S" "$R/kube-scheduler:$K8S"
    "$R/kube-proxy:$K8S" "$R/etcd:$ETCD_TAG" "$R/coredns/coredns:$COREDNS" "$R/pause:$PAUSE")

# ---- smoke-test image (not preloaded: tests/kind sends it with `kind load`) ----------------------
# Binary and image are keyed by the server's source: an edit rebuilds both, even on a warm cache.
SMOKE_TAG=modship.local/kind-smoke:1
SMOKE_H=$(cat "$HERE"/smoke/go.mod "$HERE"/smoke/*.go | sha256sum | cut -c1-12)
if ! have "smoke-$SMOKE_H"; then
    step "smoke server: go build"
    (cd "$HERE/smoke" && GOFLAGS= go build -trimpath -ldflags "-s -w" -o "$TMP/smoke" .)
    mv -f "$TMP/smoke" "$BIN/smoke-$SMOKE_H"
    done_step
fi
if [[ $(docker image inspect -f '{{index .Config.Labels "dev.modship.source"}}' "$SMOKE_TAG" 2>/dev/null) != "$SMOKE_H" ]]; then
    d="$TMP/img-smoke"
    static_root "$d"
    install -D -m755 "$BIN/smoke-$SMOKE_H" "$d/smoke"
    tar -C "$d" --numeric-owner -c . | docker import --change 'USER 65532:65532' \
        --change "LABEL dev.modship.source=$SMOKE_H" --change 'ENTRYPOINT ["/smoke"]' - "$SMOKE_TAG" >/dev/null
    rm -rf "$d"
fi

# ---- kind base image + node image ---------------------------------------------------------------
H=$( (
    cat "$REPO/tools/k8s/versions.env" "$HERE/versions.env"
    basename "$NODE_ROOTFS"
    find "$HERE" -maxdepth 1 -type f | sort | xargs sha256sum | sed "s#$HERE/##"
) | sha256sum | cut -c1-12)
BASE_TAG="modship.local/kind-base:$H"
NODE_TAG="modship.local/kind-node:$K8S-$H"
REF="$ROOT/node-$H.ref"

if [[ -f $REF ]] && docker image inspect "$NODE_TAG" >/dev/null 2>&1; then
    log "node image $NODE_TAG is cached"
    echo "$NODE_TAG"
    exit 0
fi

KIND_FILES="$(moddir "sigs.k8s.io/kind@$KIND")/images/base/files"
[[ -d $KIND_FILES ]] || die "sigs.k8s.io/kind@$KIND has no images/base/files"
[[ -f $HERE/runc-nosysres ]] || die "$HERE/runc-nosysres missing"

if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    step "kind base image $BASE_TAG"
    N="$TMP/node"
    mkdir -p "$N"
    zstd -q -d -c "$NODE_ROOTFS" | tar -C "$N" -x
    # kind's images/base/Dockerfile, in order: its files, then its RUN lines.
    install -m755 "$KIND_FILES"/usr/local/bin/* "$N/usr/local/bin/"
    mkdir -p "$N/kind/bin" "$N/etc/systemd/system/kubelet.service.d"
    chmod 755 "$N/kind" "$N/kind/bin"
    install -m644 "$KIND_FILES/kind/README.txt" "$N/kind/"
    install -m755 "$KIND_FILES"/kind/bin/* "$N/kind/bin/"
    install -m644 "$KIND_FILES/etc/crictl.yaml" "$N/etc/"
    install -D -m644 "$KIND_FILES/etc/containerd/config.toml" "$N/etc/containerd/config.toml"
    install -m644 "$KIND_FILES"/etc/default/* "$N/etc/default/"
    install -m644 "$KIND_FILES"/etc/sysctl.d/* "$N/etc/sysctl.d/"
    find "$KIND_FILES/etc/systemd/system" -maxdepth 1 -type f -exec install -m644 {} "$N/etc/systemd/system/" \;
    install -m644 "$KIND_FILES"/etc/systemd/system/kubelet.service.d/* "$N/etc/systemd/system/kubelet.service.d/"
    find "$N/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
    rm -f "$N"/lib/systemd/system/multi-user.target.wants/* "$N"/etc/systemd/system/*.wants/* \
        "$N"/lib/systemd/system/local-fs.target.wants/* "$N"/lib/systemd/system/sockets.target.wants/*udev* \
        "$N"/lib/systemd/system/sockets.target.wants/*initctl* "$N"/lib/systemd/system/basic.target.wants/*
    echo "ReadKMsg=no" >>"$N/etc/systemd/journald.conf"
    ln -sf /usr/lib/systemd/systemd "$N/sbin/init"
    chroot "$N" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
    chroot "$N" systemctl mask systemd-binfmt.service >/dev/null 2>&1
    mkdir -p "$N/etc/kubernetes/manifests"
    # Our differences from kind's base: Debian's containerd/runc/CNI paths, the runc wrapper, and
    # no negative oom_score_adj (refused here without CAP_SYS_RESOURCE).
    ln -sf /usr/bin/containerd "$N/usr/local/bin/containerd"
    mkdir -p "$N/opt/cni"
    ln -sfn /usr/lib/cni "$N/opt/cni/bin"
    install -D -m755 "$HERE/runc-nosysres" "$N/usr/local/sbin/runc-nosysres"
    chroot "$N" ctr oci spec |
        jq '.hooks.createContainer[.hooks.createContainer|length] |= .+{"path":"/kind/bin/mount-product-files.sh"}' |
        jq 'del(.process.rlimits)' >"$N/etc/containerd/cri-base.json"
    C="$N/etc/containerd/config.toml"
    sed -i -e "s#registry.k8s.io/pause:[0-9.]*\"#registry.k8s.io/pause:$PAUSE\"#" \
        -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$C"
    sed -i '/^\[proxy_plugins\]/,/address = /d' "$C" # no fuse-overlayfs here
    sed -i 's#^\(\s*\)SystemdCgroup = true#&\n\1BinaryName = "/usr/local/sbin/runc-nosysres"#' "$C"
    printf '[plugins."io.containerd.grpc.v1.cri".cni]\n  bin_dir = "/usr/lib/cni"\n  conf_dir = "/etc/cni/net.d"\n' >>"$C"
    grep -q 'restrict_oom_score_adj = true' "$C" || die "config.toml: restrict_oom_score_adj not set"
    grep -q "pause:$PAUSE\"" "$C" || die "config.toml: sandbox image not pause:$PAUSE"
    [[ $(grep -c 'BinaryName = "/usr/local/sbin/runc-nosysres"' "$C") == 2 ]] || die "config.toml: runc wrapper not set"
    echo 'net.ipv4.ip_forward=1' >"$N/etc/sysctl.d/20-modship.conf"
    install -D -m644 "$HERE/10-ptp.conflist" "$N/etc/cni/net.d/10-ptp.conflist"
    tar -C "$N" --numeric-owner -c . | docker import --change 'ENV container=docker' \
        --change 'ENTRYPOINT ["/usr/local/bin/entrypoint","/sbin/init"]' - "$BASE_TAG-rootfs" >/dev/null
    # `docker import --change` has no STOPSIGNAL: one Dockerfile line on top (no context, nothing pulled).
    printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$BASE_TAG-rootfs" | docker build -q -t "$BASE_TAG" - >"$TMP/build.log" 2>&1 ||
        die "docker build of $BASE_TAG failed: $(cat "$TMP/build.log")"
    docker rmi "$BASE_TAG-rootfs" >/dev/null
    rm -rf "$N"
    done_step
fi

# kind's buildImage() without its pulls: binaries in, images imported into the node's containerd.
step "node image $NODE_TAG"
cid=$(docker run -d --privileged --entrypoint=sleep "$BASE_TAG" infinity)
for b in kubeadm kubelet kubectl; do docker cp "$BIN/$b" "$cid:/usr/bin/$b"; done
docker exec "$cid" sh -c "printf '%s' '$K8S' > /kind/version"
docker exec "$cid" bash -c 'containerd >/tmp/containerd.log 2>&1 &
    for i in $(seq 60); do ctr version >/dev/null 2>&1 && exit 0; sleep 0.5; done; cat /tmp/containerd.log; exit 1' ||
    die "containerd did not start in the build container"
for t in "$IMAGES"/*.tar; do
    docker exec -i "$cid" ctr -n k8s.io images import --all-platforms --no-unpack --digests - <"$t" >/dev/null
done
got=$(docker exec "$cid" ctr -n k8s.io images ls -q | grep -v -e '@sha256:' -e '^sha256:' | sort)
want=$(printf '%s\n' "${EXPECTED[@]}" | sort)
[[ $got == "$want" ]] || die "images in the node differ from kubeadm's list:
$(diff <(echo "$want") <(echo "$got") || true)"
docker exec "$cid" sh -c 'kill $(pidof containerd); for i in $(seq 40); do pidof containerd >/dev/null || exit 0; sleep 0.25; done; exit 1' ||
    die "containerd did not stop in the build container"
docker exec "$cid" rm -rf /tmp/containerd.log /var/lib/containerd/tmpmounts /run/containerd
docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint","/sbin/init"]' --change 'CMD []' "$cid" "$NODE_TAG" >/dev/null
docker rm -f -v "$cid" >/dev/null
cid=
done_step

docker image inspect -f '{{.Id}}' "$NODE_TAG" | sed "s#^#$NODE_TAG #" >"$REF.tmp"
mv -f "$REF.tmp" "$REF"
# Older base and node images (other H) go; one still used by a cluster stays (rmi refuses it).
docker images --format '{{.Repository}}:{{.Tag}}' --filter reference=modship.local/kind-base --filter reference=modship.local/kind-node |
    grep -v -x -e "$BASE_TAG" -e "$NODE_TAG" | xargs -r docker rmi >/dev/null 2>&1 || true
find "$ROOT" -maxdepth 1 -name 'node-*.ref' ! -name "node-$H.ref" -delete
log "node image $NODE_TAG: $(docker image inspect -f '{{.Size}}' "$NODE_TAG" | awk '{printf "%.0f MB", $1/1e6}')"
echo "$NODE_TAG"
