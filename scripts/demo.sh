#!/usr/bin/env bash
# The demo: build ecs-reloader, start the AWS emulator on a free loopback port, create a cluster
# whose services reference secrets, rotate one secret, and watch ecs-reloader roll exactly the
# services that resolve it (and, run again, roll nothing).
#
# Python packages go into a virtual environment (.venv), never into the system's Python; the
# emulator's log goes to a fresh temporary directory, kept (and named) only if the demo fails.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Python packages for the emulator, into .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/emulator/requirements.txt
py=.venv/bin/python

step "Building ecs-reloader (the first build compiles the AWS SDK: several minutes on 2 cores)"
cargo build
bin="${CARGO_TARGET_DIR:-target}/debug/ecs-reloader"

logs=$(mktemp -d "${TMPDIR:-/tmp}/ecs-reloader-demo.XXXXXX")
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MOTO_ECS_SERVICE_RUNNING=1 "$py" tests/emulator/moto_launcher.py "$port" >"$logs/moto.log" 2>&1 &
moto=$!
finish() {
  status=$?
  kill "$moto" 2>/dev/null || true
  wait "$moto" 2>/dev/null || true
  if [ "$status" -eq 0 ]; then
    rm -rf "$logs"
  else
    echo "demo failed; the emulator's log is $logs/moto.log" >&2
  fi
}
trap finish EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true \
  ECS_RELOADER_LOG=warn \
  ECS_RELOADER_ROLLOUT_POLL_INTERVAL=2s   # moto completes rollouts at once; 15 s is for real ECS

step "A cluster whose services reference secrets (emulator at $AWS_ENDPOINT_URL)"
"$py" scripts/demo_world.py create

step "ecs-reloader plan: everything already runs the current versions"
$bin plan

step "Rotate app/db"
"$py" scripts/demo_world.py rotate

step "ecs-reloader plan --secret app/db: what would roll, and why (nothing changes)"
$bin plan --secret app/db

step "ecs-reloader reconcile: roll the stale services"
$bin reconcile

step "ecs-reloader reconcile again: level-triggered, so nothing is rolled twice"
$bin reconcile
