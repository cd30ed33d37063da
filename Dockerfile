# syntax=docker/dockerfile:1
# Multi-stage build: a Rust toolchain image compiles stepgate; the runtime image is
# debian:bookworm-slim with CA certificates and nothing else, running as a non-root user.

FROM rust:1.95-slim-bookworm AS build
# `--build-arg FEATURES=otlp` builds in OpenTelemetry export (see README, Audit trail).
ARG FEATURES=""
WORKDIR /src
# Build the dependencies alone first, so that source changes do not rebuild them.
COPY Cargo.toml Cargo.lock clippy.toml ./
RUN mkdir -p src tests/api \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs && echo 'fn main() {}' > tests/api/main.rs \
 && cargo build --release --locked --features "$FEATURES" \
 && rm -rf src
COPY src src
COPY migrations migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --features "$FEATURES"

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin stepgate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/stepgate/audit
COPY --from=build /src/target/release/stepgate /usr/local/bin/stepgate
USER 10001:10001
# In a container the API must listen on all interfaces; the file may still override it.
# Probes and metrics get their own port (9090), to be kept off the callers' network.
ENV STEPGATE_SERVER__LISTEN=0.0.0.0:8080 \
    STEPGATE_SERVER__OPS_LISTEN=0.0.0.0:9090 \
    STEPGATE_CONFIG=/etc/stepgate/stepgate.toml
# For the exported audit trail: set audit.files.dir = "/var/lib/stepgate/audit" and mount a
# durable volume here, the same for every replica (serve refuses to start when the
# directory cannot be written).
VOLUME ["/var/lib/stepgate/audit"]
EXPOSE 8080 9090
# The binary probes itself (no curl in the image): liveness of the server on this container,
# on the operations port when one is set.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["stepgate", "healthcheck"]
ENTRYPOINT ["stepgate"]
CMD ["serve"]
