# rd serve in a container: a multi-stage build, a small runtime image, a non-root user, the model
# folder as a volume, and a health check on the KServe readiness endpoint.
#
#   docker build -t rd-serve .
#   docker run --rm -p 8080:8080 -v "$PWD/models:/models:ro" rd-serve
#
# Models are picked up (and hot-reloaded) from /models: NAME.safetensors is served as NAME.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p rd-cli && strip target/release/rd

FROM debian:bookworm-slim
# curl only for the health check.
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home rd \
    && mkdir /models && chown rd /models
COPY --from=build /src/target/release/rd /usr/local/bin/rd
USER 10001
VOLUME ["/models"]
EXPOSE 8080
ENV RUST_LOG=warn
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/v2/health/ready || exit 1
ENTRYPOINT ["rd", "serve", "--models", "/models", "--addr", "0.0.0.0:8080"]
