#!/bin/sh
# /usr/local/bin/mcp-orchestrator in the image: the real binary behind docker-entrypoint,
# so that `docker compose exec app mcp-orchestrator get` runs as the app user with the
# Docker socket's group, exactly like the server does.
exec /usr/local/bin/docker-entrypoint /usr/local/libexec/mcp-orchestrator "$@"
