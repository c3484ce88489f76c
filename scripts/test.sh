#!/usr/bin/env bash
# Every test: installs what the tests need (into virtualenvs: the emulator, cfn-lint, pytest and
# actionlint in .venv, checkov in its own, .venv-tools; Debian's docker.io, qemu-user-static and
# arm64 C library; the arm64 Rust target; cargo-deny), checks formatting, lints and the
# dependencies (cargo deny), then runs the unit, property, simulation and emulator tests in Rust,
# builds the arm64 Lambda package (debug: the cheapest build through every step), and runs the
# infra tests in Python: the templates, and the binary, the arm64 package and the image run
# exactly as infra/, config/, the README and the Dockerfile configure them.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
timed() { local t=$SECONDS; "$@"; echo "[test.sh] $* : $((SECONDS - t)) s"; }

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

# Docker (the image test), qemu and the arm64 C library (the arm64 smoke tests), Chromium (the
# status page rendered in a real browser). The package
# starts no daemon here: the image test starts its own dockerd and stops it by its pid.
missing=()
for p in docker.io qemu-user-static libc6-arm64-cross chromium; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  timed as_root apt-get update -qq
  timed as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# The release binary carries no fake: outside tests the crate builds without `test-util`.
if cargo tree -e normal,features -i ecs-reloader | grep -q 'feature "test-util"'; then
  echo "the test-util feature (the in-memory fake) is on in a normal build" >&2
  exit 1
fi
# Dependencies (deny.toml): RustSec advisories from the offline snapshot in ../shared/advisory-db,
# licences, bans, crates.io only. cargo-deny opens a database as a git checkout named after its
# URL under db-path, so the snapshot is copied there as one commit dated as its SNAPSHOT.txt says
# (its age is what maximum-db-staleness judges). `cargo fetch` first: cargo-deny reads every
# platform's manifests, and --offline keeps it from fetching anything itself.
deny_version=0.20.2
[ "$(cargo deny --version 2>/dev/null)" = "cargo-deny $deny_version" ] \
  || timed cargo install --locked --quiet "cargo-deny@$deny_version"
advisory_db=target/advisory-dbs/advisory-db-3157b0e258782691 # for deny.toml's db-urls
snapshot_date=$(sed -n 's/.* dated \([0-9]\{4\}-[0-9]\{2\}-[0-9]\{2\}\).*/\1/p' ../shared/advisory-db/SNAPSHOT.txt | head -1)
[ -n "$snapshot_date" ] || { echo "../shared/advisory-db/SNAPSHOT.txt names no date" >&2; exit 1; }
rm -rf "$advisory_db" && mkdir -p "$advisory_db" && cp -R ../shared/advisory-db/. "$advisory_db/"
chmod -R u+w "$advisory_db"
git -C "$advisory_db" init --quiet && git -C "$advisory_db" add --all
GIT_AUTHOR_DATE="${snapshot_date}T00:00:00Z" GIT_COMMITTER_DATE="${snapshot_date}T00:00:00Z" \
  git -C "$advisory_db" -c user.name=snapshot -c user.email=snapshot@localhost -c commit.gpgsign=false \
  -c core.hooksPath=/dev/null commit --quiet --no-verify -m "../shared/advisory-db, $snapshot_date"
touch -d "$snapshot_date" "$advisory_db/.git/HEAD"
cargo fetch --locked --quiet
timed cargo deny --offline --locked check --hide-inclusion-graph
# Not --all-targets: that would also run the bench binaries (cargo bench runs those).
timed cargo test
# actionlint lands in Python's scripts directory (pyenv's shims may not know it yet).
"$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/actionlint" .github/workflows/*.yml
# The arm64 Lambda package (and image binary), which the infra tests run under qemu.
timed env ARCHS=arm64 PROFILE=dev bash scripts/package-lambda.sh
timed python -m pytest tests/infra -q -rs
