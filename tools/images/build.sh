#!/usr/bin/env bash
# Build the operator image (tools/images/operator.Dockerfile) with no registry: the base is
# modship.local/python-base:bookworm (tools/images/python-base.sh) unless BASE is given (e.g.
# BASE=python:3.11-slim-bookworm where a registry is reachable), and the Python packages come from a
# wheelhouse made on the host with the host's pip configuration, cached by content in
# $CACHE/wheels/<h12>/ (operator-requirements.txt + the venv's pinned versions as constraints).
#
#   tools/images/build.sh [TAG]      default TAG: ghcr.io/modship/modship:<the chart's appVersion>
#
# Needs DOCKER_HOST (tools/kind/host-setup.sh prints it; default: the private modship daemon) and the
# venv (`make venv`). Legacy builder (DOCKER_BUILDKIT=0): nothing is pulled. The last line of stdout is
# the tag; progress goes to stderr.
set -euo pipefail

PREFIX=images
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
app=$(awk -F'"' '/^appVersion:/{print $2}' "$REPO/charts/modship/Chart.yaml")
TAG=${1:-ghcr.io/modship/modship:$app}
[[ $TAG == *:* && $TAG != *:latest ]] || die "tag $TAG: give REPOSITORY:VERSION (never :latest)"
BASE=${BASE:-$("$HERE/python-base.sh" | tail -n 1)}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/modship-images.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM HUP

# The wheelhouse: keyed by the requirements and the venv's pins, so it is made once per dependency change.
"$PY" -m pip freeze --exclude-editable --disable-pip-version-check | grep -v -i '^modship[= ]' >"$TMP/constraints.txt"
h12=$(cat "$HERE/operator-requirements.txt" "$TMP/constraints.txt" | sha256sum | cut -c1-12)
WH="$CACHE/wheels/operator-$h12"
if [[ ! -f $WH/.done ]]; then
    log "wheelhouse $WH (pip wheel with the host's pip configuration)"
    mkdir -p "$CACHE/wheels"
    rm -rf "$WH.tmp" && mkdir -p "$WH.tmp"
    "$PY" -m pip wheel -q --disable-pip-version-check -w "$WH.tmp" -r "$HERE/operator-requirements.txt" \
        -c "$TMP/constraints.txt" >&2
    cp "$HERE/operator-requirements.txt" "$WH.tmp/requirements.txt"
    touch "$WH.tmp/.done"
    rm -rf "$WH" && mv "$WH.tmp" "$WH"
fi
for bad in bentoml onnxruntime numpy pandas pyarrow mlflow-; do
    ! compgen -G "$WH/${bad}*.whl" >/dev/null || die "the wheelhouse holds ${bad%-}: operator-requirements.txt pulls it in"
done

# The build context: the wheelhouse (hard links), modship's controller package (a clean copy), the Dockerfile.
mkdir -p "$TMP/ctx/wheels"
cp -l "$WH"/*.whl "$WH/requirements.txt" "$TMP/ctx/wheels/" 2>/dev/null || cp "$WH"/*.whl "$WH/requirements.txt" "$TMP/ctx/wheels/"
cp -r "$REPO/controller" "$TMP/ctx/controller"
find "$TMP/ctx/controller" -name __pycache__ -prune -exec rm -rf {} +
# the router's native build for exactly these sources, when the host has one (make native)
mkdir -p "$TMP/ctx/native"
native=$(cd "$REPO" && "$PY" -c 'from controller.adapters.router import native; print(native.built() or "")')
if [[ -n $native ]]; then
    cp -r "$native" "$TMP/ctx/native/"
    log "the router's native build $(basename "$native") goes in"
else
    log "no native build of the router for these sources (make native): the image's router runs its Python"
fi
cp "$HERE/operator.Dockerfile" "$TMP/ctx/Dockerfile"
log "docker build $TAG (FROM $BASE)"
start=$SECONDS
docker build -q --build-arg "BASE=$BASE" -t "$TAG" "$TMP/ctx" >&2
log "built $TAG in $((SECONDS - start)) s, $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
echo "$TAG"
