#!/usr/bin/env bash
# Every test: installs what the tests need (the emulator, cfn-lint, pytest; checkov in its own
# virtualenv), checks formatting and lints, then runs the unit, property, simulation and emulator
# tests in Rust and the infra tests in Python.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install -r tests/emulator/requirements.txt -r tests/infra/requirements.txt
if [ ! -x .venv-tools/bin/checkov ]; then
  python3 -m venv .venv-tools
  .venv-tools/bin/python -m pip install --quiet --disable-pip-version-check -r tests/infra/tools-requirements.txt
fi
export CHECKOV="$PWD/.venv-tools/bin/checkov"
export AWS_EC2_METADATA_DISABLED=true

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# Not --all-targets: that would also run the bench binaries (cargo bench runs those).
cargo test
python3 -m pytest tests/infra -q
