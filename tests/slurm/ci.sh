#!/usr/bin/env bash
# CI step: the SLURM integration tests on a real single-node cluster (called by .ci/run).
#
#   tests/slurm/ci.sh [extra pytest args]
#
# Runs only as root with a working apt (the cluster is installed from Debian packages); otherwise
# it says why on stderr and exits 0 without running anything. Brings the cluster up, runs
# `pytest -m slurm`, and always brings the cluster down again (also on failure or timeout).
# Exit status: pytest's (124 when it ran out of time), or 1 when the cluster did not come up.
# Time limits: GIGAMIL_SLURM_UP_TIMEOUT (default 600 s, mostly apt), GIGAMIL_SLURM_TEST_TIMEOUT
# (default 600 s for pytest; the SLURM run itself is bounded at 480 s).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cluster="$here/cluster.sh"
up_timeout=${GIGAMIL_SLURM_UP_TIMEOUT:-600}
test_timeout=${GIGAMIL_SLURM_TEST_TIMEOUT:-600}

say() { printf '[slurm-ci] %s\n' "$*" >&2; }

if [[ $(id -u) != 0 ]]; then
  say "not root: SLURM integration tests not run"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  say "no apt-get: SLURM integration tests not run"
  exit 0
fi
if ! dpkg-query -W -f='${Status}' slurmctld 2>/dev/null | grep -q 'install ok installed'; then
  if ! timeout -k 10 300 apt-get update -qq >/dev/null 2>&1 ||
    ! apt-cache show slurmctld munge slurmd slurm-client >/dev/null 2>&1; then
    say "apt does not work here (update failed or no slurm packages): SLURM tests not run"
    exit 0
  fi
fi

cleanup() { timeout -k 5 60 "$cluster" down || say "cluster.sh down failed"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$SECONDS
if ! timeout -k 10 "$up_timeout" "$cluster" up; then
  say "the SLURM cluster did not come up; slurmctld/slurmd logs:"
  tail -n 30 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 2>/dev/null || true
  exit 1
fi
say "cluster up in $((SECONDS - start)) s"

cd "$repo" || exit 1
python=${PYTHON:-python} # the interpreter .ci/run installed gigamil[slurm,test] into
timeout -k 30 "$test_timeout" "$python" -m pytest -m slurm -p no:cacheprovider \
  tests/integration/test_slurm.py "$@"
rc=$?
say "pytest -m slurm exited $rc after $((SECONDS - start)) s"
exit "$rc"
