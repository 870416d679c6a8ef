#!/usr/bin/env bash
# Host set-up for the container images and the kind cluster (docs/plans/kind.md §2). Idempotent; needs root.
#  - installs docker.io, debootstrap, jq and zstd from Debian when any is missing;
#  - installs tools/kind/runc-nosysres to $CACHE/bin and makes it the default runtime only when this host's
#    capability bounding set lacks CAP_SYS_RESOURCE (then `docker run --privileged` fails with plain runc);
#  - starts a PRIVATE dockerd on unix:///run/modship-docker.sock (data under $CACHE/docker, exec root
#    /run/modship-docker, its own containerd namespace) unless `docker info` already answers on that socket.
#    No other daemon, socket or /etc/docker file is touched.
# Callers export DOCKER_HOST=unix:///run/modship-docker.sock (and DOCKER_BUILDKIT=0) for every docker call.
# The last line of stdout is that DOCKER_HOST value; progress goes to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${MODSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modship}
SOCK=/run/modship-docker.sock
export DOCKER_HOST=unix://$SOCK
TIMEOUT=${MODSHIP_DOCKERD_TIMEOUT:-90}

log() { printf '[host-setup] %s\n' "$*" >&2; }
die() { printf '[host-setup] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (dockerd, debootstrap)"

# 1. Debian packages (only when one is missing).
missing=()
for pair in dockerd:docker.io debootstrap:debootstrap jq:jq zstd:zstd; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${pair%%:*} ]] || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
DOCKERD=$(command -v dockerd || echo /usr/sbin/dockerd)

# 2. The runc wrapper, at a fixed path outside the clone; replaced only when its content changed.
mkdir -p "$CACHE/bin" "$CACHE/docker"
if ! cmp -s "$HERE/runc-nosysres" "$CACHE/bin/runc-nosysres"; then
    install -m755 "$HERE/runc-nosysres" "$CACHE/bin/.runc-nosysres.tmp"
    mv -f "$CACHE/bin/.runc-nosysres.tmp" "$CACHE/bin/runc-nosysres"
fi
RT=
capbnd=$(awk '/^CapBnd/{print $2}' /proc/self/status)
if ! (( 0x$capbnd & (1 << 24) )); then # CAP_SYS_RESOURCE = 24
    RT='"runtimes":{"nosysres":{"path":"'$CACHE'/bin/runc-nosysres"}},"default-runtime":"nosysres",'
fi
CONF="$CACHE/docker-daemon.json"
want="{${RT}\"storage-driver\":\"overlay2\"}"
[[ -f $CONF && $(cat "$CONF") == "$want" ]] || printf '%s\n' "$want" >"$CONF"

# 3. The private daemon, unless it already answers.
if docker info >/dev/null 2>&1; then
    log "dockerd already answers on $SOCK"
else
    pidfile=/run/modship-docker.pid
    if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        log "dockerd (pid $(cat "$pidfile")) is starting; waiting for it"
    else
        rm -f "$SOCK" "$pidfile"
        log "starting dockerd on $SOCK (data root $CACHE/docker, log $CACHE/dockerd.log)"
        setsid nohup "$DOCKERD" --config-file "$CONF" --data-root "$CACHE/docker" --exec-root /run/modship-docker \
            -H "$DOCKER_HOST" --pidfile "$pidfile" --containerd-namespace modship \
            --containerd-plugins-namespace modship-plugins >"$CACHE/dockerd.log" 2>&1 </dev/null &
        started=1
    fi
    deadline=$((SECONDS + TIMEOUT))
    until docker info >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            tail -n 20 "$CACHE/dockerd.log" >&2 || true
            die "dockerd did not answer on $SOCK within ${TIMEOUT}s (log: $CACHE/dockerd.log)"
        fi
        sleep 0.5
    done
    # A restarted daemon revives kind nodes left by a killed run (restart=on-failure:1): remove them.
    if [[ -n ${started:-} ]] && command -v kind >/dev/null 2>&1; then
        kind get clusters 2>/dev/null | grep '^modship-' | xargs -r -n1 kind delete cluster --name >&2 || true
    fi
fi
echo "$DOCKER_HOST"
