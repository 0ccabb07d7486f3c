#!/usr/bin/env bash
# Install (or upgrade) the meterchain gateway agent on Raspberry Pi OS or Debian (arm64, x86-64).
#
#   sudo deploy/gateway/install.sh --wheel meterchain-0.1.0-py3-none-any.whl
#   sudo deploy/gateway/install.sh --source /path/to/meterchain/checkout
#   deploy/gateway/install.sh --prefix /tmp/stage --no-systemd --source .      (CI: no root)
#
# --prefix DIR    install below DIR instead of / (staging and tests). The virtual environment
#                 only runs where it was made: build an image by running this script inside it
#                 (chroot, or cloud-init at first boot; see cloud-init/user-data).
# --no-systemd    only lay out files: no system user, no systemctl, no udev reload
# --wheel PATH    the meterchain wheel to install (built with `python -m build` or `pip wheel`)
# --source DIR    a meterchain checkout to pip-install from
# --python PY     interpreter for the virtual environment (default python3; needs 3.11+)
# --pip-arg ARG   one extra argument for pip, repeatable; offline from a wheelhouse:
#                 --pip-arg --no-index --pip-arg --find-links=/boot/firmware/meterchain/wheels
#
# Lays out:  PREFIX/opt/meterchain            virtual environment (bin/meterchain), libexec/, share/
#            PREFIX/etc/meterchain            config and device key (0750 root:meterchain)
#            PREFIX/var/lib/meterchain        outbox and state (0750 meterchain)
#            PREFIX/etc/systemd/system        meterchain-agent.{service,path}, meterchain-firstboot.service
#            PREFIX/etc/udev/rules.d          99-meterchain-serial.rules
#            PREFIX/etc/systemd/journald.conf.d/meterchain.conf, PREFIX/usr/local/bin/meterchain
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix=/
systemd=true
wheel=""
source_dir=""
python=python3
pip_args=()
user=meterchain

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) need_value "$@"; prefix="$2"; shift 2 ;;
        --no-systemd) systemd=false; shift ;;
        --wheel) need_value "$@"; wheel="$2"; shift 2 ;;
        --source) need_value "$@"; source_dir="$2"; shift 2 ;;
        --python) need_value "$@"; python="$2"; shift 2 ;;
        --pip-arg) need_value "$@"; pip_args+=("$2"); shift 2 ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown option $1" >&2; usage ;;
    esac
done

# --- check everything before changing anything ---
if [ -n "$wheel" ] && [ -n "$source_dir" ]; then die "give --wheel or --source, not both"; fi
if [ -n "$wheel" ]; then
    [ -f "$wheel" ] || die "no wheel at $wheel"
    target="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
elif [ -n "$source_dir" ]; then
    [ -f "$source_dir/pyproject.toml" ] || die "$source_dir has no pyproject.toml (not a meterchain checkout)"
    target="$(cd "$source_dir" && pwd)"
else
    die "give --wheel PATH or --source DIR"
fi
command -v "$python" >/dev/null || die "$python not found (apt-get install python3)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "meterchain needs Python 3.11 or newer; $python is $("$python" --version 2>&1)"
"$python" -c 'import venv, ensurepip' 2>/dev/null || die "$python cannot make virtual environments (apt-get install python3-venv)"
mkdir -p "$prefix" || die "cannot create $prefix"
prefix="$(cd "$prefix" && pwd)"
root_prefix="${prefix%/}"   # "" for /, so "$root_prefix/opt" never starts with //
is_root=false; [ "$(id -u)" = 0 ] && is_root=true
if [ "$systemd" = true ] && [ "$is_root" = false ]; then
    die "run as root, or pass --no-systemd (and a --prefix you can write) to only lay out files"
fi
if [ "$systemd" = true ] && [ -n "$root_prefix" ]; then
    say "warning: --prefix $prefix with systemd: units refer to /opt/meterchain, and the virtual" \
        "environment only runs at $root_prefix/opt/meterchain"
fi

venv="$root_prefix/opt/meterchain"
etc="$root_prefix/etc/meterchain"
state="$root_prefix/var/lib/meterchain"
unit_dir="$root_prefix/etc/systemd/system"
udev_dir="$root_prefix/etc/udev/rules.d"
journald_dir="$root_prefix/etc/systemd/journald.conf.d"

# --- the system user (it owns the state folder and runs the agent) ---
if [ "$systemd" = true ]; then
    if ! getent passwd "$user" >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/meterchain --no-create-home \
            --shell /usr/sbin/nologin --comment "meterchain gateway agent" "$user"
        say "created system user $user"
    fi
    getent group dialout >/dev/null && usermod -a -G dialout "$user"
fi

# --- folders ---
install -d -m 0755 "$venv" "$unit_dir" "$udev_dir" "$journald_dir" "$root_prefix/usr/local/bin"
install -d -m 0750 "$etc" "$state"
if [ "$systemd" = true ]; then
    chown root:"$user" "$etc"
    chown "$user:$user" "$state"
fi

# --- the virtual environment and the package ---
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    say "made a virtual environment at $venv"
fi
say "installing $target into $venv (this takes a minute on a Raspberry Pi)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade ${pip_args[@]+"${pip_args[@]}"} "$target"
"$venv/bin/meterchain" --help >/dev/null || die "the installed meterchain command does not run"
ln -sfn "/opt/meterchain/bin/meterchain" "$root_prefix/usr/local/bin/meterchain"

# --- units, udev rules, journald limits, first-boot script, docs ---
install -m 0644 "$here/meterchain-agent.service" "$here/meterchain-agent.path" \
    "$here/meterchain-firstboot.service" "$unit_dir/"
install -m 0644 "$here/99-meterchain-serial.rules" "$udev_dir/"
install -m 0644 "$here/journald-meterchain.conf" "$journald_dir/meterchain.conf"
install -d -m 0755 "$venv/libexec" "$venv/share/doc/meterchain"
install -m 0755 "$here/firstboot.sh" "$venv/libexec/firstboot.sh"
if [ -f "$here/../../docs/deploy.md" ]; then
    install -m 0644 "$here/../../docs/deploy.md" "$venv/share/doc/meterchain/deploy.md"
fi

# --- tell systemd and udev (in a chroot, `systemctl enable` still writes the links) ---
if [ "$systemd" = true ]; then
    if command -v systemctl >/dev/null; then
        systemctl --root="$prefix" enable meterchain-firstboot.service meterchain-agent.path >/dev/null
        if [ -z "$root_prefix" ] && [ -d /run/systemd/system ]; then
            systemctl daemon-reload
            if command -v udevadm >/dev/null; then
                udevadm control --reload && udevadm trigger --subsystem-match=tty --action=add
            fi
            systemctl start meterchain-firstboot.service     # no-op once it has run
            systemctl try-restart meterchain-agent.service   # an upgrade takes effect now
        fi
    else
        say "warning: no systemctl; enable meterchain-firstboot.service and meterchain-agent.path by hand"
    fi
fi

say "installed meterchain $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("meterchain"))') into $venv"
if [ ! -f "$etc/agent.toml" ]; then
    say "next: sudo meterchain agent provision --backend URL --token TOKEN"
fi
