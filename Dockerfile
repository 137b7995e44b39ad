# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, run as a non-root user on a slim base.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that code changes do not rebuild them. Cargo reads every
# workspace member's manifest, so the bench's (bench/) is copied too, with a stub for its
# code: the image builds the service only.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml ./bench/
RUN mkdir -p src bench/src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin cartbus

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/cartbus --create-home cartbus
COPY --from=build /src/target/release/cartbus /usr/local/bin/cartbus
USER cartbus
WORKDIR /var/lib/cartbus
ENV CARTBUS_LISTEN=0.0.0.0:8080 \
    CARTBUS_DATA_DIR=/var/lib/cartbus/data \
    CARTBUS_LOG_FORMAT=json
VOLUME ["/var/lib/cartbus/data"]
EXPOSE 8080
# Give the load balancer time to see readiness go false before connections close.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cartbus"]
CMD ["serve"]
