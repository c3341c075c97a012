# The orchestrator image. Multi-stage:
#   builder  compiles the release binaries inside the container, the dependencies in a layer
#            of their own (a manifest-only skeleton is built first), so that editing src/
#            rebuilds only this crate. This stage is byte-for-byte the one of Dockerfile.mcp
#            (tests/compose.rs checks it): the second build of `compose build` is all cache.
#   runtime  Debian slim with the binary, the CA bundle and docker/: an entrypoint that
#            joins the Docker socket's group and drops root (see the README).
#
# Base images are build arguments. The defaults are the public images; on an engine that
# cannot pull, scripts/offline-images makes local stand-ins and prints the arguments:
#   docker build --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=... .
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /build
# Both binaries are built static (glibc, crt-static): mcp-server must run FROM scratch, and
# sharing one configuration lets Dockerfile and Dockerfile.mcp share this whole stage
# through the layer cache, so a cold `compose build` compiles the dependencies once. Static
# glibc 2.36 resolves host names (files and DNS, e.g. `redis`) without any shared library.
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static"
# 1. Dependencies only, from a manifest-only skeleton: reused until Cargo.toml or
#    Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/mcp-server.rs \
 && mkdir -p benches && echo 'fn main() {}' > benches/orchestrator.rs && echo 'fn main() {}' > benches/planner.rs \
 && : > src/lib.rs \
 && cargo build --release --locked --bins --target "$(rustc -vV | sed -n 's/^host: //p')" \
 && rm -rf src
# 2. The crate. COPY keeps the sources' mtimes, which may be older than the skeleton's
#    build: touch them so that cargo rebuilds the crate (and only the crate).
COPY src ./src
RUN find src -name '*.rs' -exec touch {} + \
 && target="$(rustc -vV | sed -n 's/^host: //p')" \
 && cargo build --release --locked --bins --target "$target" \
 && mkdir /out \
 && install -m 0755 "target/$target/release/mcp-orchestrator" "target/$target/release/mcp-server" /out/ \
 && for bin in /out/*; do \
      if ldd "$bin" 2>&1 | grep -q '=>'; then echo "$bin is not static" >&2; exit 1; fi; \
    done \
 && /out/mcp-orchestrator --version

FROM ${RUNTIME_IMAGE}
ARG APP_UID=10001
ARG PORT=3000
RUN groupadd --system --gid "${APP_UID}" mcpo \
 && useradd --system --uid "${APP_UID}" --gid mcpo --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin mcpo
# HTTPS (Gemini) verifies against this bundle; the builder has one in both the public and
# the offline Rust image, so the runtime stage needs no apt.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/mcp-orchestrator /usr/local/libexec/mcp-orchestrator
# docker-entrypoint joins the Docker socket's group and drops root (and removes the
# sandboxes when the server is stopped); `mcp-orchestrator` on PATH is a wrapper that goes
# through it, so `compose exec app mcp-orchestrator ...` runs as the app user too.
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint
COPY docker/mcp-orchestrator.sh /usr/local/bin/mcp-orchestrator
COPY docker/remove-sandboxes /usr/local/libexec/remove-sandboxes
ENV APP_UID=${APP_UID} \
    PORT=${PORT} \
    REMOVE_SANDBOXES_ON_STOP=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    RUST_LOG=info,rmcp=warn
EXPOSE ${PORT}
# The image starts as root only for docker-entrypoint, which runs everything else as
# APP_UID; the health check goes through it too, as the same user as the server.
HEALTHCHECK --interval=5s --timeout=8s --start-period=20s --retries=3 \
    CMD ["mcp-orchestrator", "healthcheck"]
ENTRYPOINT ["docker-entrypoint"]
CMD ["mcp-orchestrator", "serve"]
