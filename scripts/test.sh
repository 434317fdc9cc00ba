#!/usr/bin/env bash
# The whole test suite, installing what it needs first (idempotent; the README's second command,
# and what .ci/run calls):
#   Debian: influxdb, mosquitto, haproxy (the scale-out test's load balancer), chromium, chromium-driver,
#   fonts-noto-cjk, poppler-utils (pdftotext reads the printed shift report back; python3-venv on stock Debian),
#   openssl (deploy/compose/make-secrets.sh)
#   Python: a venv in .venv with the project and its test extras
# then ruff and mypy, then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/core -x`; MIERUKA_TEST_WORKERS=0 runs
# in one process (default: 2 workers).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
command -v influxd >/dev/null || need+=(influxdb)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need+=(fonts-noto-cjk)
command -v pdftotext >/dev/null || need+=(poppler-utils)
# deploy/compose/make-secrets.sh makes the broker's CA and certificate with it (tests/deploy run it)
command -v openssl >/dev/null || need+=(openssl)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)

if [ ${#need[@]} -gt 0 ]; then
  influx_before=$(pgrep -x influxd >/dev/null && echo yes || echo no)
  mosquitto_before=$(pgrep -x mosquitto >/dev/null && echo yes || echo no)
  haproxy_before=$(pgrep -x haproxy >/dev/null && echo yes || echo no)
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Where services start on install, Debian's influxdb (and mosquitto, haproxy) now run as system
  # services, influxd bound to all interfaces. The tests start their own on loopback: stop what we started.
  for svc in influxdb:influxd:$influx_before mosquitto:mosquitto:$mosquitto_before haproxy:haproxy:$haproxy_before; do
    IFS=: read -r name proc before <<<"$svc"
    if [ "$before" = no ] && pgrep -x "$proc" >/dev/null; then
      echo "stopping the $name system service that the install started"
      $SUDO systemctl disable --now "$name" >/dev/null 2>&1 || $SUDO service "$name" stop >/dev/null 2>&1 || true
    fi
  done
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# lint and types gate the suite (MIERUKA_SKIP_LINT=1 skips them for a quick partial run)
if [ "${MIERUKA_SKIP_LINT:-0}" != 1 ]; then
  .venv/bin/ruff check .
  .venv/bin/mypy core collector api dashboard simulators mieruka
fi
# two workers (pytest-xdist): most end-to-end tests wait on wall-clock windows, not on the CPU
exec .venv/bin/python -m pytest -n "${MIERUKA_TEST_WORKERS:-2}" "$@"
