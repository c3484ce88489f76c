# The `serve` image: the binary on a glibc base with CA certificates, run as a non-root user, with
# no shell and no curl (the container health check is the binary: `ecs-reloader healthcheck`).
#
#   docker build -t ecs-reloader .
#
# builds the release binary in a Rust container and puts it on distroless (public registries).
# Where the binary is built outside the image (the release workflow's cross builds, or a machine
# without registries), the `prebuilt` source copies it from the build context instead:
#
#   docker build --build-arg SOURCE=prebuilt --build-arg BINARY=target/dist/linux-arm64/ecs-reloader \
#     --platform linux/arm64 -t ecs-reloader:arm64 .
#
# BASE names the runtime base: any glibc (2.34 or newer) image with CA certificates whose user
# 65532 may run it. tests/infra/as_deployed.py assembles one from the host's files to build
# offline.

ARG BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BUILDER=rust:1-bookworm
# `build` (compile here) or `prebuilt` (copy BINARY from the context). BuildKit builds only the
# stages the final one needs, so a prebuilt image pulls no Rust image.
ARG SOURCE=build

FROM ${BUILDER} AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && for b in lambda scan emulator; do echo 'fn main() {}' > benches/$b.rs; done \
 && cargo build --release --locked \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin ecs-reloader \
 && mkdir -p /out && cp target/release/ecs-reloader /out/ecs-reloader

FROM scratch AS prebuilt
ARG TARGETARCH
# The binary for the image's platform, built outside (scripts/package-lambda.sh leaves it here).
ARG BINARY=target/dist/linux-${TARGETARCH}/ecs-reloader
COPY ${BINARY} /out/ecs-reloader

FROM ${SOURCE} AS binary

FROM ${BASE}
COPY --from=binary /out/ecs-reloader /ecs-reloader
COPY config/ecs-reloader.toml /etc/ecs-reloader/ecs-reloader.toml
# distroless's `nonroot`, by number so that any base works (a name needs its /etc/passwd entry).
USER 65532:65532
EXPOSE 8080
ENV ECS_RELOADER_CONFIG=/etc/ecs-reloader/ecs-reloader.toml
ENTRYPOINT ["/ecs-reloader"]
CMD ["serve"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/ecs-reloader", "healthcheck", "--addr", "127.0.0.1:8080"]
