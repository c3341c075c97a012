# Shared by scripts/up and scripts/test: make sure redis-server and a Docker engine exist.
# Installs from Debian's packages when missing (root only) and starts the engine if none
# answers. Sourced, not run.

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: $1 is missing and installing it needs root; install it and re-run" >&2
        exit 1
    fi
}

apt_install() {
    need_root "$*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

ensure_redis() {
    if ! command -v redis-server >/dev/null; then
        echo "installing redis-server (Debian package)" >&2
        apt_install redis-server
    fi
    # tests/sentinel.rs makes its test CA with it (TLS to Redis and Sentinel).
    if ! command -v openssl >/dev/null; then
        echo "installing openssl (Debian package)" >&2
        apt_install openssl
    fi
}

docker_cli() {
    if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else echo docker; fi
}

ensure_docker() {
    local docker
    docker="$(docker_cli)"
    if "$docker" info >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v dockerd >/dev/null; then
        echo "installing docker.io (Debian package)" >&2
        apt_install docker.io
        docker="$(docker_cli)"
    fi
    need_root "a running Docker engine"
    echo "starting dockerd" >&2
    nohup dockerd >/var/log/mcp-orchestrator-dockerd.log 2>&1 &
    for _ in $(seq 1 120); do
        if "$docker" info >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "error: the Docker engine did not come up (see /var/log/mcp-orchestrator-dockerd.log)" >&2
    exit 1
}

# The Compose command: $COMPOSE when set (e.g. "docker compose"), else docker-compose (1.29
# on this team's machines), else the Compose v2 plugin. Prints it; fails when there is none.
compose_cli() {
    if [[ -n "${COMPOSE:-}" ]]; then
        echo "$COMPOSE"
    elif command -v docker-compose >/dev/null; then
        echo docker-compose
    elif docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    else
        echo "error: neither docker-compose nor the docker compose plugin is installed" >&2
        return 1
    fi
}

# The base images for docker-compose.yml, as KEY=VALUE lines (RUST_IMAGE, RUNTIME_IMAGE,
# REDIS_IMAGE): the values already in the environment when all three are set; else the
# public images when the engine has them or can pull them; else local stand-ins made by
# scripts/offline-images (cached, so only the first run is slow).
compose_base_images() {
    if [[ -n "${RUST_IMAGE:-}" && -n "${RUNTIME_IMAGE:-}" && -n "${REDIS_IMAGE:-}" ]]; then
        printf 'RUST_IMAGE=%s\nRUNTIME_IMAGE=%s\nREDIS_IMAGE=%s\n' \
            "$RUST_IMAGE" "$RUNTIME_IMAGE" "$REDIS_IMAGE"
        return 0
    fi
    local docker image public=1
    docker="$(docker_cli)"
    for image in debian:bookworm-slim redis:7-bookworm rust:1-bookworm; do
        if ! "$docker" image inspect "$image" >/dev/null 2>&1 &&
            ! timeout 600 "$docker" pull --quiet "$image" >/dev/null 2>&1; then
            public=0
            break
        fi
    done
    if [[ $public == 1 ]]; then
        printf 'RUST_IMAGE=%s\nRUNTIME_IMAGE=%s\nREDIS_IMAGE=%s\n' \
            rust:1-bookworm debian:bookworm-slim redis:7-bookworm
    else
        echo "the public base images cannot be pulled; using local ones (scripts/offline-images)" >&2
        "$(dirname "${BASH_SOURCE[0]}")/offline-images"
    fi
}

# Make sure a Compose command exists: installs Debian's docker-compose (1.29) when neither
# docker-compose nor the v2 plugin is there (root only).
ensure_compose() {
    if [[ -z "${COMPOSE:-}" ]] && ! command -v docker-compose >/dev/null &&
        ! docker compose version >/dev/null 2>&1; then
        echo "installing docker-compose (Debian package)" >&2
        apt_install docker-compose
    fi
}

ensure_openapi_validator() {
    if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
        echo "installing openapi-spec-validator (PyPI)" >&2
        python3 -m pip install -q openapi-spec-validator >/dev/null 2>&1 ||
            python3 -m pip install -q --break-system-packages openapi-spec-validator
    fi
}

# The official MCP Python SDK, pinned, in a venv for the integration tests' client driver
# (tests/mcp/client.py; tests/common/mcp_py.rs runs it). The venv is ${MCP_VENV:-<repo>/
# target/mcp-venv}; tests/mcp/requirements.txt pins what goes in it. Idempotent: a marker file
# in the venv holds the sha256 of the requirements and the python it was made with, so a run
# with nothing to do costs one sha256sum. Prints one progress line on stderr.
ensure_mcp_sdk() {
    local root venv reqs want python
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${MCP_VENV:-$root/target/mcp-venv}"
    reqs="$root/tests/mcp/requirements.txt"
    python="$(command -v python3)" || { need_root python3; apt_install python3; python="$(command -v python3)"; }
    want="$( { cat "$reqs"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
    if [[ -x "$venv/bin/python" && "$(cat "$venv/.requirements-sha256" 2>/dev/null)" == "$want" ]]; then
        echo "MCP Python SDK: $venv is up to date" >&2
        return 0
    fi
    echo "MCP Python SDK: creating $venv ($(grep -v '^#' "$reqs" | xargs))" >&2
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
        --requirement "$reqs" >&2
    echo "$want" >"$venv/.requirements-sha256"
}
