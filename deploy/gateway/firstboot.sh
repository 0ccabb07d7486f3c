#!/usr/bin/env bash
# meterchain gateway, first boot of a flashed card (run once by meterchain-firstboot.service, or
# by cloud-init's runcmd). Idempotent: a second run changes nothing that is already right.
#
#  1. the system user and the folders, with their owners and modes (an image built in a chroot
#     may lack the user; a card's filesystem may have lost the modes);
#  2. the device's own signing key, made here so that no two cards share one;
#  3. the installer's only remaining step, on the console and in /etc/issue.d:
#       sudo meterchain agent provision --backend URL --token TOKEN
#     which writes /etc/meterchain/agent.toml; meterchain-agent.path then starts the agent.
set -euo pipefail

root="${MC_ROOT:-}"                       # tests run it against a staged tree
venv="$root/opt/meterchain"
etc="$root/etc/meterchain"
state="$root/var/lib/meterchain"
key="$etc/device-key.pem"
user=meterchain

log() { echo "meterchain-firstboot: $*"; }

if [ "$(id -u)" = 0 ] && [ -z "$root" ]; then
    if ! getent passwd "$user" >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/meterchain --no-create-home \
            --shell /usr/sbin/nologin --comment "meterchain gateway agent" "$user"
    fi
    getent group dialout >/dev/null && usermod -a -G dialout "$user"
fi

install -d -m 0750 "$etc" "$state"
owned() { [ "$(id -u)" = 0 ] && [ -z "$root" ]; }
if owned; then
    chown root:"$user" "$etc"
    chown "$user:$user" "$state"
fi

if [ ! -s "$key" ]; then
    "$venv/bin/meterchain" agent keygen --out "$key" > "$state/device-public.txt"
    log "made a new device key: $(grep -m1 '^key id' "$state/device-public.txt")"
else
    log "device key $key exists; keeping it"
fi
chmod 0600 "$key"
owned && chown "$user:$user" "$key" "$state/device-public.txt" 2>/dev/null || true

message="meterchain gateway ready to provision. Log in and run:
  sudo meterchain agent provision --backend URL --token TOKEN
Device key: $(grep -m1 '^key id' "$state/device-public.txt" 2>/dev/null || echo "see $key")"
if [ -d "$root/etc/issue.d" ] || [ -z "$root" ]; then
    install -d -m 0755 "$root/etc/issue.d"
    printf '%s\n\n' "$message" > "$root/etc/issue.d/meterchain.issue"
fi
echo "$message"
touch "$state/.firstboot-done"
