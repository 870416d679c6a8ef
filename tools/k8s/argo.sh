#!/usr/bin/env bash
# Build Argo Rollouts' rollouts-controller from the Go module proxy, the side-by-side anchor of the
# operator benchmark (bench/argo.py). The wrapper module tools/k8s/argo pins the version and copies
# argo-rollouts' replace block; go.sum is committed and the build never rewrites it.
#
# Output (outside the repo so fresh clones on this machine reuse it):
#   ${MODSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modship}/argo-rollouts-<V>/
#     bin/rollouts-controller   crds/*.yaml (from the module zip's manifests/crds)
#
# Idempotent and cached: a warm call only checks that both are present. Files are written to a
# temp dir and moved into place, so an interruption never leaves a partial binary. The last line of
# stdout is the output dir; progress goes to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ARGO=$(sed -n 's/^require github.com\/argoproj\/argo-rollouts \(v[^ ]*\)$/\1/p' "$HERE/argo/go.mod")
[[ -n $ARGO ]] || { echo "[argo-build] ERROR: no argo-rollouts version in $HERE/argo/go.mod" >&2; exit 1; }

CACHE_ROOT=${MODSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modship}
ROOT="$CACHE_ROOT/argo-rollouts-$ARGO"
log() { printf '[argo-build] %s\n' "$*" >&2; }

if [[ -x $ROOT/bin/rollouts-controller && -f $ROOT/crds/rollout-crd.yaml ]]; then
    printf '%s\n' "$ROOT"
    exit 0
fi

mkdir -p "$ROOT"
TMP=$(mktemp -d "$ROOT/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM HUP

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"

if [[ ! -x $ROOT/bin/rollouts-controller ]]; then
    log "argo-rollouts $ARGO: building rollouts-controller (about 3 minutes on 2 cores)"
    (cd "$HERE/argo" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$TMP/rollouts-controller" \
        github.com/argoproj/argo-rollouts/cmd/rollouts-controller)
    mkdir -p "$ROOT/bin"
    mv -f "$TMP/rollouts-controller" "$ROOT/bin/rollouts-controller"
fi

if [[ ! -f $ROOT/crds/rollout-crd.yaml ]]; then
    dir=$(cd "$HERE/argo" && go list -m -f '{{.Dir}}' github.com/argoproj/argo-rollouts)
    [[ -d $dir/manifests/crds ]] || { log "ERROR: no manifests/crds in $dir"; exit 1; }
    mkdir -p "$TMP/crds"
    cp "$dir"/manifests/crds/*-crd.yaml "$TMP/crds/"
    chmod u+w "$TMP"/crds/*
    rm -rf "$ROOT/crds"
    mv "$TMP/crds" "$ROOT/crds"
fi
log "argo-rollouts $ARGO ready in $ROOT"
printf '%s\n' "$ROOT"
