# The operator image: the release binary, statically linked (musl), on distroless/static
# (no shell, no package manager), as user 65532 (the chart's runAsUser). The chart passes
# `run` and its flags as args.
#
#   make image            (buildah, podman or docker, whichever is installed)
#
# The test suite runs the same source, built for the host (see the README's Image section).
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin oauth-operator \
 && cp target/x86_64-unknown-linux-musl/release/oauth-operator /oauth-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /oauth-operator /oauth-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/oauth-operator"]
CMD ["run"]
