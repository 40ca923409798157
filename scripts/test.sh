#!/usr/bin/env bash
# Installs everything the tests need (system tools, the package with its test extra) and runs every test.
# The README's test command; .ci/run calls it too. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for tool in iptables ipset ip curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq iptables ipset iproute2 curl >/dev/null
  fi
fi
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
# The tests start zpilot in hundreds of processes (serve, bootstrap, every `cni status` a world's test
# polls, the CNI agents): with PYTHONDONTWRITEBYTECODE set (as here and in the image) each compiled every
# module of ours it imported again, 0.05-0.25 s of CPU a process. Compiled once here, into the ignored
# __pycache__ directories, they are read (sources are checked by mtime and size: an edit is recompiled).
python3 -m compileall -q -j 0 zpilot tests
exec python3 -m pytest -q -p no:cacheprovider "$@"
