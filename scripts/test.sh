#!/usr/bin/env bash
# Every test: installs what the tests need into virtualenvs (the emulator, cfn-lint and pytest in
# .venv; checkov in its own, .venv-tools), checks formatting and lints, then runs the unit,
# property, simulation and emulator tests in Rust and the infra tests in Python.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -r tests/emulator/requirements.txt -r tests/infra/requirements.txt
# The tests start the emulator with `python3` (or $PYTHON) and the infra tests call cfn-lint.
export PATH="$PWD/.venv/bin:$PATH" PYTHON="$PWD/.venv/bin/python"
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
python -m pytest tests/infra -q
