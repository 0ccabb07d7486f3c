#!/usr/bin/env bash
# Render mosquitto.conf.template into a Mosquitto configuration, on stdout.
#
#   render-mosquitto-conf.sh [--conf-dir DIR] [--persist-dir DIR] [--local-port PORT]
#                            [--tls-listen "PORT [ADDRESS]"] [--client-certs] > mosquitto.conf
#
# --conf-dir     holds passwd, acl and tls/{ca.crt,server.crt,server.key}
#                (default /etc/mosquitto/meterchain)
# --persist-dir  Mosquitto's database folder, with a trailing slash (default /var/lib/mosquitto/)
# --local-port   the loopback listener for a backend on the same host (default 1883)
# --tls-listen   the TLS listener for gateways: a port, optionally an address (default 8883,
#                all interfaces)
# --client-certs gateways authenticate with client certificates (CN = device id)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
conf_dir=/etc/mosquitto/meterchain
persist_dir=/var/lib/mosquitto/
local_port=1883
tls_listen=8883
client_certs=false

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "error: $1 needs a value" >&2; exit 2; }; }

while [ $# -gt 0 ]; do
    case "$1" in
        --conf-dir) need_value "$@"; conf_dir="$2"; shift 2 ;;
        --persist-dir) need_value "$@"; persist_dir="$2"; shift 2 ;;
        --local-port) need_value "$@"; local_port="$2"; shift 2 ;;
        --tls-listen) need_value "$@"; tls_listen="$2"; shift 2 ;;
        --client-certs) client_certs=true; shift ;;
        -h|--help) usage ;;
        *) echo "error: unknown option $1" >&2; usage ;;
    esac
done

# Values end up inside sed expressions and a config file: allow plain paths and ports only.
for value in "$conf_dir" "$persist_dir"; do
    [[ "$value" =~ ^/[A-Za-z0-9._/-]*$ ]] || { echo "error: not an absolute plain path: $value" >&2; exit 2; }
done
[[ "$local_port" =~ ^[0-9]{1,5}$ ]] || { echo "error: bad --local-port: $local_port" >&2; exit 2; }
[[ "$tls_listen" =~ ^[0-9]{1,5}( [0-9A-Za-z.:-]+)?$ ]] || { echo "error: bad --tls-listen: $tls_listen" >&2; exit 2; }
case "$persist_dir" in */) ;; *) persist_dir="$persist_dir/" ;; esac

if [ "$client_certs" = true ]; then uncomment='s/^#client-certs: //'; else uncomment='/^#client-certs: /d'; fi
sed -e "s|@CONF_DIR@|$conf_dir|g" \
    -e "s|@PERSIST_DIR@|$persist_dir|g" \
    -e "s|@LOCAL_PORT@|$local_port|g" \
    -e "s|@TLS_LISTEN@|$tls_listen|g" \
    -e "$uncomment" \
    "$here/mosquitto.conf.template"
