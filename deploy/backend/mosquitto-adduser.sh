#!/usr/bin/env bash
# Add, replace or delete a Mosquitto login for a gateway or the backend.
#
#   mosquitto-adduser.sh [--passwd FILE] [--password-stdin] [--reload] DEVICE_ID
#   mosquitto-adduser.sh [--passwd FILE] [--reload] --delete DEVICE_ID
#
# A device's username is its device id; the ACL's pattern lines then give it exactly its own
# topics (meterchain/v1/<id>/...), so adding a device needs no ACL edit. The backend's username
# is meterchain-backend (its rights are a `user` block in the ACL).
# Without --password-stdin a random password is generated and printed once on stdout; with it,
# the first line of stdin is the password. The password never appears on a command line.
# --passwd   the password file (default /etc/mosquitto/meterchain/passwd; created 0640)
# --reload   tell the running broker to re-read its password file (systemctl reload mosquitto)
set -euo pipefail

passwd_file=/etc/mosquitto/meterchain/passwd
from_stdin=false
reload=false
delete=false
user=""

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --passwd) [ $# -ge 2 ] || usage; passwd_file="$2"; shift 2 ;;
        --password-stdin) from_stdin=true; shift ;;
        --reload) reload=true; shift ;;
        --delete) delete=true; shift ;;
        -h|--help) usage ;;
        -*) echo "error: unknown option $1" >&2; usage ;;
        *) [ -z "$user" ] || usage; user="$1"; shift ;;
    esac
done
[ -n "$user" ] || usage
# The same rule as contract/reading.py DEVICE_ID_RE: no + # / (they would widen %u patterns)
# and no ':' (the password file's separator).
if ! [[ "$user" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]]; then
    echo "error: '$user' is not a valid device id (letters, digits, . _ -; at most 64)" >&2
    exit 2
fi
command -v mosquitto_passwd >/dev/null || { echo "error: mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 1; }

umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dir="$(dirname "$passwd_file")"
mkdir -p "$dir"

# Everything but this user's line, then (unless deleting) the user's new hashed line.
if [ -f "$passwd_file" ]; then
    awk -F: -v u="$user" '$1 != u' "$passwd_file" > "$work/rest"
else
    : > "$work/rest"
fi

password=""
if [ "$delete" = false ]; then
    if [ "$from_stdin" = true ]; then
        IFS= read -r password || true
        [ -n "$password" ] || { echo "error: empty password on stdin" >&2; exit 2; }
    else
        password="$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')"
    fi
    printf '%s:%s\n' "$user" "$password" > "$work/plain"
    mosquitto_passwd -U "$work/plain"
    cat "$work/plain" >> "$work/rest"
elif [ ! -f "$passwd_file" ] || cmp -s "$work/rest" "$passwd_file"; then
    echo "note: $user had no login in $passwd_file" >&2
fi

# Replace the file atomically, keeping its owner and mode (new files: 0640, group mosquitto).
new="$passwd_file.new.$$"
cat "$work/rest" > "$new"
if [ -f "$passwd_file" ]; then
    chmod --reference="$passwd_file" "$new"
    [ "$(id -u)" != 0 ] || chown --reference="$passwd_file" "$new"
else
    chmod 0640 "$new"
    if [ "$(id -u)" = 0 ] && getent group mosquitto >/dev/null; then chgrp mosquitto "$new"; fi
fi
mv -f "$new" "$passwd_file"

if [ "$reload" = true ]; then
    systemctl reload mosquitto
fi
if [ "$delete" = true ]; then
    echo "deleted $user from $passwd_file" >&2
elif [ "$from_stdin" = false ]; then
    echo "$password"
    echo "added $user to $passwd_file; the password above is shown only once" >&2
else
    echo "added $user to $passwd_file" >&2
fi
