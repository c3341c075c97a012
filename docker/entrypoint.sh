#!/bin/sh
# Entrypoint of the orchestrator image (/usr/local/bin/docker-entrypoint).
#
# 1. Runs the command as the unprivileged app user (APP_UID, default 10001) with the
#    Docker socket's group as a supplementary group.
#
#    The orchestrator drives the host's engine through the bind-mounted socket
#    (/var/run/docker.sock, or the path in DOCKER_HOST=unix://...). That socket belongs to
#    root and a "docker" group whose GID differs from host to host (999 on many; 105 and
#    106 on this team's machines; root-owned on Docker Desktop), so no GID baked into the
#    image is right everywhere. The container starts as root, reads the socket's GID here,
#    and runs the command through setpriv as APP_UID:APP_UID plus that GID, with every
#    capability and the bounding set dropped and no-new-privileges set.
#
# 2. For `mcp-orchestrator serve` with REMOVE_SANDBOXES_ON_STOP=1 (the default): stays as
#    PID 1 (a shell, as the app user, idle) and forwards SIGTERM/SIGINT to the server; once the server has
#    stopped because of such a signal (`compose stop`, `compose down`, `docker stop`), it
#    removes the sandbox containers of its instance and store (docker/remove-sandboxes;
#    the server writes the store identity to STORE_ID_FILE), so a stopped
#    stack leaves nothing behind. Desired state stays in Redis: the next start recreates
#    the sandboxes. A crash is not a stop: the sandboxes stay and the restarted server
#    adopts them. With several replicas of the instance, only the last one to stop
#    removes them: on a clean stop the server writes to STORE_ID_FILE.replicas how many
#    other replicas are still live (a heartbeat in Redis), and anything but 0, or no
#    answer at all, keeps the sandboxes (one replica restarting never takes its peers'
#    sandboxes away). REMOVE_SANDBOXES_ON_STOP=always removes them on every stop of
#    this replica; REMOVE_SANDBOXES_ON_STOP=0 keeps them on stops too (and exec's the
#    server directly).
#
# Escape hatches: started with a non-root --user (e.g. `user: "10001:10001"` plus
# `group_add: [<gid>]`), it changes no user. APP_UID=0 keeps root (only for a socket that
# no group may open; avoid it).
#
# Access to the Docker socket is root-equivalent on the host whatever the user in here;
# running non-root limits what a compromised process can do inside the container, not
# through the socket.
set -eu

self=/usr/local/bin/docker-entrypoint
uid="${APP_UID:-10001}"
sock=/var/run/docker.sock
case "${DOCKER_HOST:-}" in
unix://*) sock="${DOCKER_HOST#unix://}" ;;
esac

# 1. Root: join the socket's group, drop to the app user, and start over as that user.
if [ "$(id -u)" = 0 ] && [ "$uid" != 0 ]; then
    if [ -S "$sock" ]; then
        gid="$(stat -c %g "$sock")"
        mode="$(stat -c %a "$sock")"
        case "$mode" in
        ?[67]?) ;;
        *) echo "docker-entrypoint: warning: $sock (mode $mode) is not group-writable;" \
            "uid $uid cannot use it (see APP_UID in the README)" >&2 ;;
        esac
        groups="--groups=$gid"
    else
        # No socket (DOCKER_HOST=tcp://..., or the mount is missing): nothing to join.
        groups="--clear-groups"
    fi
    exec setpriv --reuid="$uid" --regid="$uid" "$groups" \
        --inh-caps=-all --bounding-set=-all --no-new-privs -- "$self" "$@"
fi

# 2. The server, supervised once (the `mcp-orchestrator` wrapper calls this script again).
is_serve() {
    [ "${1##*/}" = mcp-orchestrator ] && [ "${2:-}" = serve ]
}
remove="${REMOVE_SANDBOXES_ON_STOP:-1}"
case "$remove" in
1 | always) ;;
*) remove="" ;;
esac
if [ -z "$remove" ] || [ -n "${MCPO_SUPERVISED:-}" ] || ! is_serve "$@" || [ ! -S "$sock" ]; then
    exec "$@"
fi
export MCPO_SUPERVISED=1
# The server writes its store's identity here; only containers carrying it are removed.
export STORE_ID_FILE="${STORE_ID_FILE:-/tmp/mcp-orchestrator.store-id}"
rm -f "$STORE_ID_FILE" "$STORE_ID_FILE.replicas"

stopping=""
"$@" &
child=$!
trap 'stopping=1; kill -TERM "$child" 2>/dev/null || true' TERM INT
# `wait` returns early (status > 128) when a trapped signal arrives: wait again until the
# server has really exited.
while :; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || break
done
others="$(cat "$STORE_ID_FILE.replicas" 2>/dev/null || echo unknown)"
if [ -n "$stopping" ] && [ "$remove" != always ] && [ "$others" != 0 ]; then
    echo "docker-entrypoint: other replicas of this instance may be live ($others);" \
        "the sandboxes stay" >&2
elif [ -n "$stopping" ]; then
    if [ -s "$STORE_ID_FILE" ]; then
        /usr/local/libexec/remove-sandboxes "$sock" "${ORCHESTRATOR_INSTANCE:-default}" \
            "$(cat "$STORE_ID_FILE")" >&2 || true
    else
        echo "docker-entrypoint: the server never read its store's identity; no sandbox removed" >&2
    fi
fi
exit "$status"
