#!/usr/bin/env bash
# Creates the secrets deploy/compose/compose.yaml mounts, in deploy/compose/secrets/ (never committed).
# Run it once before the first `docker compose up`; run again, it creates only what is missing (a secret
# already there is kept: delete a file to make a new one). Needs openssl, and either local tools
# (mosquitto_passwd, and `mieruka` as MIERUKA=/path/to/mieruka) or Docker with the images pulled or built
# (`docker compose build` first for the mieruka image).
#
#   secrets/influx_admin_password, influx_admin_token   InfluxDB 2.x's admin (its setup on first start)
#   secrets/influx_v1_password                          the v1 user mieruka logs in as (the store URL's user)
#   secrets/mqtt_password, mosquitto_passwd             the collector's MQTT login; the broker's hashed copy
#   secrets/mqtt_ca_cert, mqtt_ca_key                   a CA for the broker (give mqtt_ca_cert to devices)
#   secrets/mqtt_server_cert, mqtt_server_key           the broker's certificate, for the names in MQTT_NAMES
#   secrets/api/tokens.json                             the API's token file (hashes only)
#   secrets/dashboard/read.token, operator.token        the dashboard's tokens (roles read and operator)
#
# Permissions: the folder is 0700, so other users of this host cannot read what it holds; the files in it
# are 0644, since compose mounts them as they are and the containers read them as their own users
# (mieruka 10001, mosquitto 1883), not as you.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${SECRETS_DIR:-$here/secrets}"
mosquitto_image="${MOSQUITTO_IMAGE:-eclipse-mosquitto:2.0.20}"
# names plant devices use to reach the broker: add this host's name, e.g. MQTT_NAMES="mosquitto,factory-pc-1"
names="${MQTT_NAMES:-mosquitto,localhost}"
mqtt_user="${MQTT_USER:-mieruka}"

umask 077
mkdir -p "$dir/api" "$dir/dashboard"
chmod 700 "$dir"

random() { openssl rand -base64 32 | tr -d '/+=\n' | cut -c1-32; }
made() { echo "made $1"; }

for f in influx_admin_password influx_admin_token influx_v1_password mqtt_password; do
  if [ ! -s "$dir/$f" ]; then random >"$dir/$f"; made "$f"; fi
done

if [ ! -s "$dir/mqtt_ca_cert" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 3650 -nodes \
    -keyout "$dir/mqtt_ca_key" -out "$dir/mqtt_ca_cert" -subj "/CN=mieruka MQTT CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  made mqtt_ca_cert
fi
if [ ! -s "$dir/mqtt_server_cert" ]; then
  san=""
  IFS=, read -ra list <<<"$names"
  for n in "${list[@]}"; do san+="${san:+,}DNS:$n"; done
  san+=",IP:127.0.0.1"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/mqtt_server_key" \
    -out "$dir/mqtt_server.csr" -subj "/CN=${list[0]}" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" >"$dir/mqtt_server.ext"
  openssl x509 -req -in "$dir/mqtt_server.csr" -CA "$dir/mqtt_ca_cert" -CAkey "$dir/mqtt_ca_key" \
    -CAcreateserial -days 825 -sha256 -extfile "$dir/mqtt_server.ext" -out "$dir/mqtt_server_cert" 2>/dev/null
  rm -f "$dir/mqtt_server.csr" "$dir/mqtt_server.ext" "$dir/mqtt_ca_cert.srl"
  made "mqtt_server_cert ($san)"
fi

if [ ! -s "$dir/mosquitto_passwd" ]; then
  # a plain "user:password" file hashed in place (-U): the password is never on a command line
  printf '%s:%s\n' "$mqtt_user" "$(cat "$dir/mqtt_password")" >"$dir/mosquitto_passwd"
  if command -v mosquitto_passwd >/dev/null; then
    mosquitto_passwd -U "$dir/mosquitto_passwd"
  else
    docker run --rm --user "$(id -u):$(id -g)" -v "$dir:/secrets" "$mosquitto_image" \
      mosquitto_passwd -U /secrets/mosquitto_passwd
  fi
  made "mosquitto_passwd (user $mqtt_user)"
fi

# the dashboard's tokens: token.sh runs `mieruka token create`, which prints the token once and keeps its
# hash in secrets/api/tokens.json
if [ ! -s "$dir/dashboard/read.token" ]; then
  SECRETS_DIR="$dir" "$here/token.sh" create --role read --name dashboard >"$dir/dashboard/read.token"
  made "dashboard/read.token"
fi
if [ ! -s "$dir/dashboard/operator.token" ]; then
  SECRETS_DIR="$dir" "$here/token.sh" create --role operator --name dashboard-operator >"$dir/dashboard/operator.token"
  made "dashboard/operator.token"
fi

# the containers read these as their own users (see the top); the folder keeps everyone else out
find "$dir" -type f -exec chmod 644 {} +
find "$dir" -mindepth 1 -type d -exec chmod 755 {} +
chmod 700 "$dir"
chmod 600 "$dir/mqtt_ca_key"  # signs certificates; no container needs it
echo "secrets in $dir"
