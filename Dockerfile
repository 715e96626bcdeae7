# The abc-operator image: one static binary on an empty base, run as a non-root user.
#
#   docker build -t abc-operator:0.1.0 .
#
# The build context is the repository root; only Cargo.toml, Cargo.lock and src/ are used.
# BuildKit is needed for the cache mounts (the default builder of current Docker).
#
# The test cluster's real node runs an image with this file's final stage (user, ports,
# entrypoint, cmd, CA bundle), built by tools/images.sh without a registry; it carries the
# host's glibc build of the binary (with the libraries it links) instead of this static musl
# one, as the musl target may not be installable there.

FROM rust:1-bookworm AS build
# Set by BuildKit to the platform being built (amd64, arm64).
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --profile dist --locked --target "$target" --bin abc-operator \
 && cp "target/$target/dist/abc-operator" /abc-operator

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /abc-operator /abc-operator
# No shell, no package manager, no root: the uid the chart's podSecurityContext expects.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/abc-operator"]
CMD ["controller"]
