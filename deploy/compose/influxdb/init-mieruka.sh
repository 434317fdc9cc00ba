#!/bin/bash
# Run once by the influxdb:2.x image, on its first start, after its setup created the org, the bucket and
# the admin (DOCKER_INFLUXDB_INIT_*). mieruka speaks InfluxQL over the v1 API (/query, /write), which on
# InfluxDB 2.x needs two more things this script creates with the image's `influx` CLI (already logged in
# as the admin):
#   - a DBRP mapping: the v1 database name of the store URL (influxdb://USER@influxdb:8086/DATABASE)
#     maps to the bucket;
#   - a v1 authorization: the user name and password mieruka sends (HTTP Basic), allowed to read and
#     write that bucket (the API writes too: alert claims and the operator's entries).
# The password comes from a compose secret file, never from the environment.
set -euo pipefail

db="${MIERUKA_INFLUX_DB:?set MIERUKA_INFLUX_DB (the database name of the store URL)}"
user="${MIERUKA_INFLUX_V1_USER:?set MIERUKA_INFLUX_V1_USER (the user name of the store URL)}"
password_file="${MIERUKA_INFLUX_V1_PASSWORD_FILE:-/run/secrets/influx_v1_password}"
bucket_id="${DOCKER_INFLUXDB_INIT_BUCKET_ID:?the image exports it after its setup}"
org="${DOCKER_INFLUXDB_INIT_ORG:?set DOCKER_INFLUXDB_INIT_ORG}"

if [ ! -s "$password_file" ]; then
  echo "init-mieruka: $password_file is missing or empty; run deploy/compose/make-secrets.sh first" >&2
  exit 1
fi
# one trailing newline is not part of the password (mieruka reads its copy of the file the same way)
password="$(cat "$password_file")"

influx v1 dbrp create --org "$org" --bucket-id "$bucket_id" --db "$db" --rp autogen --default
# --password is the CLI's only non-interactive way; this runs inside the InfluxDB container, once
influx v1 auth create --org "$org" --username "$user" --password "$password" \
  --read-bucket "$bucket_id" --write-bucket "$bucket_id" --description "mieruka (v1 API)"
echo "init-mieruka: database '$db' -> bucket $bucket_id, v1 user '$user' can read and write it"
