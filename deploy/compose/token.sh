#!/usr/bin/env bash
# API tokens of deploy/compose/: `mieruka token ARGS` on secrets/api/tokens.json, which the running API
# re-reads (no restart). Examples:
#   ./token.sh create --role read --name hall-2 > secrets/hall-2.token   # printed once: keep it
#   ./token.sh list
#   ./token.sh revoke --name hall-2
# Runs the local `mieruka` when MIERUKA=/path/to/mieruka is set, else the mieruka image with Docker.
# `mieruka token` writes the file with mode 0600 for you; it is made readable again for the API's user
# (uid 10001), inside the secrets folder that only you can enter.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${SECRETS_DIR:-$here/secrets}"
image="${MIERUKA_IMAGE:-mieruka:0.1.0}"
if [ $# -eq 0 ]; then
  echo "usage: $0 create --role read|operator|admin --name NAME | list | revoke --name NAME" >&2
  exit 2
fi
mkdir -p "$dir/api"
action="$1"; shift
status=0
if [ -n "${MIERUKA:-}" ]; then
  "$MIERUKA" token "$action" --tokens "$dir/api/tokens.json" "$@" || status=$?
else
  docker run --rm --user "$(id -u):$(id -g)" -v "$dir/api:/secrets/api" "$image" \
    token "$action" --tokens /secrets/api/tokens.json "$@" || status=$?
fi
if [ -f "$dir/api/tokens.json" ]; then chmod 644 "$dir/api/tokens.json"; fi
exit "$status"
