#!/usr/bin/env bash
# Builds the Lambda packages and the image binaries, for x86_64 and arm64 (Graviton):
#   target/lambda/ecs-reloader-<x86_64|arm64>.zip   the binary as `bootstrap`, for provided.al2023
#   target/dist/linux-<amd64|arm64>/ecs-reloader    the same binary, for `docker build --build-arg SOURCE=prebuilt`
# Each is linked with zig (from PyPI, through cargo-zigbuild) against glibc 2.34, al2023's, so
# that it runs there whatever glibc the build machine has; the script fails if one needs more.
#
# ARCHS="x86_64 arm64" (default both) and PROFILE=release (default) or dev choose what to build;
# the tests build `ARCHS=arm64 PROFILE=dev`, the cheapest build that still goes through every step.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHS=${ARCHS:-x86_64 arm64}
PROFILE=${PROFILE:-release}
GLIBC_MAX=2.34

# Both from PyPI as prebuilt wheels (seconds, where `cargo install cargo-zigbuild` compiles for
# minutes); their scripts directory goes first on PATH, so cargo finds this cargo-zigbuild.
python3 -m pip install --quiet --disable-pip-version-check ziglang==0.17.1 cargo-zigbuild==0.24.0
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
target_dir=${CARGO_TARGET_DIR:-target}
profile_dir=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")

for arch in $ARCHS; do
  case $arch in
    x86_64) triple=x86_64-unknown-linux-gnu docker_arch=amd64 ;;
    arm64) triple=aarch64-unknown-linux-gnu docker_arch=arm64 ;;
    *) echo "unknown architecture $arch (x86_64 or arm64)" >&2; exit 2 ;;
  esac
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$triple"; then
    rustup target add "$triple"
  fi
  cargo zigbuild --locked --profile "$PROFILE" --target "$triple.$GLIBC_MAX" --bin ecs-reloader
  bin="$target_dir/$triple/$profile_dir/ecs-reloader"

  # The newest glibc symbol version the binary needs (readelf reads any architecture's ELF).
  newest=$(readelf -V --wide "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
  if [ "$(printf '%s\n%s\n' "$newest" "$GLIBC_MAX" | sort -V | tail -1)" != "$GLIBC_MAX" ]; then
    echo "$bin needs GLIBC_$newest; provided.al2023 has GLIBC_$GLIBC_MAX" >&2
    exit 1
  fi

  mkdir -p "target/lambda/$arch" "target/dist/linux-$docker_arch"
  cp "$bin" "target/lambda/$arch/bootstrap"
  cp "$bin" "target/dist/linux-$docker_arch/ecs-reloader"
  (cd "target/lambda/$arch" && rm -f "../ecs-reloader-$arch.zip" \
    && python3 -m zipfile -c "../ecs-reloader-$arch.zip" bootstrap)
  echo "target/lambda/ecs-reloader-$arch.zip ($PROFILE): bootstrap needs at most GLIBC_$newest (provided.al2023 has GLIBC_$GLIBC_MAX)"
done
