# The sidecar's image. Build from the repository root:
#     docker build -t otel-sendmmsg .
# Docker's classic builder suffices (Debian 12's docker.io and docker-compose use it): nothing
# here needs BuildKit (tests/deployment.rs checks with tools/dockerfile-check).
# It runs as nobody; the binary carries, as file capabilities, exactly the capabilities
# otel-sendmmsg/src/privileges.rs lists (tests/deployment.rs and tests/privileges.rs hold this
# file to that list), and the container's cap_add / capabilities.add decide which it gets.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The BPF toolchain first, on its own layer: it takes minutes and changes only with the script.
COPY scripts/setup.sh scripts/setup.sh
# The toolchain only: nothing traces during a build, and a build container cannot mount.
RUN scripts/setup.sh --no-mounts
COPY . .
RUN cargo build --release --locked --package otel-sendmmsg --bin otel-sendmmsg

FROM debian:bookworm-slim
COPY --from=build /src/target/release/otel-sendmmsg /usr/local/bin/otel-sendmmsg
# Permitted only (=p), not effective: the sidecar raises what it needs at start-up, so a
# container missing one of them still starts and says which, instead of the kernel refusing
# to exec the binary with no reason given. setcap rewrites the binary's layer once more (about
# 10 MB): a COPY does not carry file capabilities in every builder, a RUN's layer does, and
# RUN --mount (which would spare the copy) needs BuildKit.
# ca-certificates stays: the system's roots for https:// collectors (managed backends).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin ca-certificates \
    && setcap cap_bpf,cap_perfmon,cap_dac_override,cap_sys_ptrace,cap_checkpoint_restore=p /usr/local/bin/otel-sendmmsg \
    && apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/otel-sendmmsg"]
