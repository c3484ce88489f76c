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
#
# Both bases are pinned by digest (the multi-platform index, so one digest serves amd64 and arm64),
# with the tag beside it for people: a pull gets exactly these bytes until someone moves them.
# No registry can be reached from where this was written, so each digest was taken from public
# material rather than pulled: BASE's is the one that several public projects' Dockerfiles pin for
# cc-debian12:nonroot in autumn 2026 (one records it as the multi-platform index reviewed on
# 2026-10-08); BUILDER's is the manifest-list digest of rust:1.95.0-bookworm that public build
# logs show being resolved. Neither has been pulled against its registry from here: the first
# build with network access verifies them (a wrong digest fails the pull, never builds on other
# bytes). Moving one is a one-line change that Renovate or Dependabot should propose (pick one
# that reads image references in ARG defaults, or move them by hand). BUILDER's Rust must be the
# one rust-toolchain.toml pins (1.95.0).
ARG BASE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
ARG BUILDER=rust:1.95.0-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1
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
