# syntax=docker/dockerfile:1
#
# Switchboard node image.
#   docker build -t switchboard:0.1.0 .
#   docker run --rm -p 8000:8000 -p 9000:9000 switchboard:0.1.0        (embedded SQLite, one node)
#   docker run --rm -e DATABASE_URL=mysql://... -e REDIS_URL=redis://... switchboard:0.1.0
# Kubernetes manifests: k8s/ (see k8s/README.md).

# ---------------------------------------------------------------------------------------------
# Build: the toolchain version the project pins (rust-toolchain.toml says 1.95.0; that file is
# left out of the build context by .dockerignore so that rustup does not download the clippy and
# rustfmt components it lists, which a release build does not need).
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
# No query! macros are checked against a live database during the build.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never
# The whole context, as filtered by .dockerignore: Cargo.toml, Cargo.lock, src/ and whatever the
# manifest may declare besides (build script, tests, benches), without target/ or ops material.
COPY . .
# Cache the registry and the target directory between builds (BuildKit). The binary is copied
# out of the cache mount, which does not outlive this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin switchboard \
    && install -D -m 0755 target/release/switchboard /out/switchboard

# ---------------------------------------------------------------------------------------------
# Runtime: glibc to match the builder, CA certificates for TLS to managed MySQL/Redis/MongoDB.
FROM debian:bookworm-slim
# ca-certificates is left unpinned on purpose: it should be the current one of the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/switchboard \
        --no-create-home --shell /usr/sbin/nologin switchboard \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/switchboard
COPY --from=builder /out/switchboard /usr/local/bin/switchboard

# The working directory is the only writable place the image needs: the embedded default
# DATABASE_URL (sqlite://switchboard.db) lands here when no MySQL is configured.
WORKDIR /var/lib/switchboard

# Defaults for a container: every listener on all interfaces (the binary's own default keeps the
# admin listener on 127.0.0.1, which probes and Prometheus could not reach), the HAProxy agent
# on, logs as JSON. Backends stay unset (embedded) until DATABASE_URL / REDIS_URL / MONGODB_URL
# are given.
ENV SWITCHBOARD_LISTEN=0.0.0.0:8000 \
    SWITCHBOARD_ADMIN_LISTEN=0.0.0.0:9000 \
    SWITCHBOARD_AGENT_LISTEN=0.0.0.0:9100 \
    SWITCHBOARD_LOG_FORMAT=json

USER 10001:10001
# 8000: REST + WebSocket; 9000: admin (/metrics, /healthz, /readyz, POST /admin/drain; keep it
# private); 9100: HAProxy agent-check.
EXPOSE 8000 9000 9100

# SIGTERM starts the graceful drain (readyz 503, paced 1001 closes, exit 0 within
# SWITCHBOARD_DRAIN_TIMEOUT); a second SIGTERM finishes at once. The binary is PID 1 and handles
# the signal itself, so no init wrapper is needed. Give `docker stop` enough time:
# docker stop -t 330 (drain timeout 300 + margin).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchboard"]
