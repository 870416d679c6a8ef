# Sourced by the image scripts (build.sh, mlflow.sh): paths, the venv's python, the private docker
# daemon with the legacy builder (nothing is pulled), and log/die with the caller's PREFIX.
HERE=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${MODSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modship}
PY=${PYTHON:-$REPO/.venv/bin/python}
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/modship-docker.sock} DOCKER_BUILDKIT=0

log() { printf '[%s] %s\n' "$PREFIX" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$PREFIX" "$*" >&2; exit 1; }
[[ -x $PY ]] || die "no venv python at $PY: run make venv"
