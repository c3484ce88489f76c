#!/usr/bin/env bash
# Builds the Lambda package target/lambda/ecs-reloader.zip: the release binary as `bootstrap`,
# for the provided.al2023 runtime on x86_64, linked against glibc 2.34 (al2023's) with zig from
# PyPI, so that it runs there whatever glibc the build machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check ziglang
command -v cargo-zigbuild >/dev/null || cargo install --locked cargo-zigbuild
cargo zigbuild --release --target x86_64-unknown-linux-gnu.2.34
mkdir -p target/lambda
cp target/x86_64-unknown-linux-gnu/release/ecs-reloader target/lambda/bootstrap
(cd target/lambda && rm -f ecs-reloader.zip && python3 -m zipfile -c ecs-reloader.zip bootstrap)
newest=$(objdump -T target/lambda/bootstrap | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1)
echo "target/lambda/ecs-reloader.zip: bootstrap needs at most $newest (provided.al2023 has GLIBC_2.34)"
