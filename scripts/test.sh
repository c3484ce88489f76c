#!/usr/bin/env bash
# Every test: installs the emulator the integration tests start, checks formatting and lints,
# then runs the unit, property, simulation and emulator tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r tests/emulator/requirements.txt
export AWS_EC2_METADATA_DISABLED=true
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# Not --all-targets: that would also run the bench binaries (cargo bench runs those).
cargo test
