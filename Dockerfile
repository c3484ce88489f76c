# The `serve` image: built in a Rust container, run from a distroless base as a non-root user.
#   docker build -t ecs-reloader .
# The runtime image has no shell and no curl: the container health check is the binary itself
# (`ecs-reloader healthcheck`, see infra/ecs-reloader.yaml).

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs && echo 'fn main() {}' > benches/lambda.rs \
 && cargo build --release --locked \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin ecs-reloader

# glibc-based (the binary links glibc dynamically), CA certificates included, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ecs-reloader /ecs-reloader
COPY config/ecs-reloader.toml /etc/ecs-reloader/ecs-reloader.toml
USER nonroot:nonroot
EXPOSE 8080
ENV ECS_RELOADER_CONFIG=/etc/ecs-reloader/ecs-reloader.toml
ENTRYPOINT ["/ecs-reloader"]
CMD ["serve"]
