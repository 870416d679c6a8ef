#!/usr/bin/env bash
# Build modship.local/python-base:bookworm offline-style: debootstrap a minbase Debian bookworm with python3 (3.11)
# from apt's mirror and `docker import` it (docs/plans/kind.md §4 step 1). No registry is needed.
# The root filesystem is cached as $CACHE/debootstrap/bookworm-minbase-<h8>.tar.zst, so a lost docker store
# rebuilds in seconds. Idempotent: nothing happens when the image exists. Needs root and DOCKER_HOST
# (tools/kind/host-setup.sh). The last line of stdout is the image tag; progress goes to stderr.
set -euo pipefail

CACHE=${MODSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modship}
TAG=${MODSHIP_PYTHON_BASE:-modship.local/python-base:bookworm}
MIRROR=${MODSHIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PKGS=python3,python3-venv,ca-certificates
: "${DOCKER_HOST:?export DOCKER_HOST (tools/kind/host-setup.sh prints it)}"

log() { printf '[python-base] %s\n' "$*" >&2; }
die() { printf '[python-base] ERROR: %s\n' "$*" >&2; exit 1; }

if docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG present"; echo "$TAG"; exit 0
fi
h8=$(printf '%s\n' bookworm minbase "$PKGS" | sha256sum | cut -c1-8)
TARBALL="$CACHE/debootstrap/bookworm-minbase-$h8.tar.zst"
mkdir -p "$CACHE/debootstrap"
if [[ ! -s $TARBALL ]]; then
    [[ $(id -u) == 0 ]] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap missing: run tools/kind/host-setup.sh"
    TMP=$(mktemp -d "$CACHE/debootstrap/.tmp.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
    trap 'exit 130' INT TERM HUP
    log "debootstrap --variant=minbase --include=$PKGS bookworm ($MIRROR)"
    debootstrap --variant=minbase --include="$PKGS" bookworm "$TMP/root" "$MIRROR" >"$TMP/debootstrap.log" 2>&1 \
        || { tail -n 20 "$TMP/debootstrap.log" >&2; die "debootstrap failed"; }
    R=$TMP/root
    rm -rf "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/*
    # the non-root user every modship image runs as (uid/gid 65532, like distroless "nonroot")
    grep -q '^nonroot:' "$R/etc/group" || echo 'nonroot:x:65532:' >>"$R/etc/group"
    grep -q '^nonroot:' "$R/etc/passwd" || echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' >>"$R/etc/passwd"
    install -d -m755 -o 65532 -g 65532 "$R/home/nonroot"
    tar --numeric-owner -C "$R" -c . | zstd -q -T0 -9 -o "$TMP/rootfs.tar.zst"
    mv -f "$TMP/rootfs.tar.zst" "$TARBALL"
    log "cached $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi
zstd -q -dc "$TARBALL" | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG" >&2
echo "$TAG"
