#!/usr/bin/env bash
# Build the MLflow server image (tools/images/mlflow.Dockerfile) with no registry, like build.sh builds the
# operator's: the base is modship.local/python-base:bookworm (python-base.sh) unless BASE is given, and the
# wheels come from a wheelhouse made on the host (mlflow at the venv's version, the venv's pins as
# constraints), cached by content in $CACHE/wheels/mlflow-<h12>/.
#
#   tools/images/mlflow.sh [TAG]      default TAG: modship.local/mlflow:<mlflow version>
#
# Needs DOCKER_HOST (default: the private modship daemon) and the venv. The last line of stdout is the tag.
set -euo pipefail

PREFIX=mlflow-image
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# What only MLflow's clients import (models, plots, evaluation): left out of the server image.
CLIENT_ONLY='^(scipy|scikit_learn|matplotlib|pyarrow|contourpy|kiwisolver|fonttools|pillow|cycler|pyparsing|skops|joblib|threadpoolctl|docker|prettytable|wcwidth)-'
version=$("$PY" -c 'import importlib.metadata as m; print(m.version("mlflow"))')
TAG=${1:-modship.local/mlflow:$version}
# The image is reused only if it was built from these inputs (an edit of the Dockerfile rebuilds it).
KEY=$({ cat "$HERE/mlflow.Dockerfile"; echo "$version ${BASE:-default} $CLIENT_ONLY"; } | sha256sum | cut -c1-12)
if [[ $(docker image inspect -f '{{index .Config.Labels "dev.modship.source"}}' "$TAG" 2>/dev/null) == "$KEY" &&
      -z ${MODSHIP_REBUILD:-} ]]; then
    log "$TAG present"; echo "$TAG"; exit 0
fi
BASE=${BASE:-$("$HERE/python-base.sh" | tail -n 1)}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/modship-mlflow.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM HUP

"$PY" -m pip freeze --exclude-editable --disable-pip-version-check | grep -v -i '^modship[= ]' >"$TMP/constraints.txt"
h12=$({ echo "mlflow==$version"; echo "$CLIENT_ONLY"; cat "$TMP/constraints.txt"; } | sha256sum | cut -c1-12)
WH="$CACHE/wheels/mlflow-$h12"
if [[ ! -f $WH/.done ]]; then
    log "wheelhouse $WH (pip wheel with the host's pip configuration)"
    mkdir -p "$CACHE/wheels"
    rm -rf "$WH.tmp" && mkdir -p "$WH.tmp"
    "$PY" -m pip wheel -q --disable-pip-version-check -w "$WH.tmp" "mlflow==$version" -c "$TMP/constraints.txt" >&2
    touch "$WH.tmp/.done"
    rm -rf "$WH" && mv "$WH.tmp" "$WH"
fi

mkdir -p "$TMP/ctx/wheels"
for whl in "$WH"/*.whl; do
    [[ $(basename "$whl") =~ $CLIENT_ONLY ]] && continue
    ln "$whl" "$TMP/ctx/wheels/" 2>/dev/null || cp "$whl" "$TMP/ctx/wheels/"
done
cp "$HERE/mlflow.Dockerfile" "$TMP/ctx/Dockerfile"
log "docker build $TAG (FROM $BASE)"
start=$SECONDS
docker build -q --build-arg "BASE=$BASE" --label "dev.modship.source=$KEY" -t "$TAG" "$TMP/ctx" >&2
log "built $TAG in $((SECONDS - start)) s, $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
echo "$TAG"
