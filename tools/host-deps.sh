#!/usr/bin/env bash
# Host packages the project needs on Debian 12 (root): Python venv for the tests, and what the
# nspawn lab needs. Installs only what is missing, so `make lab` / `make test` on a prepared
# machine do not touch apt.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have python3 || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
have git || need+=(git)
have systemd-nspawn || need+=(systemd-container)
have debootstrap || need+=(debootstrap)
have iptables || need+=(iptables)
have ip || need+=(iproute2)
have nsenter || need+=(util-linux)
have pkill || need+=(procps)
have haproxy || need+=(haproxy)      # `haproxy -c` of the rendered config in the fast tier
have vagrant || need+=(vagrant)      # `vagrant validate` of the Vagrantfile
[ -e /usr/share/ca-certificates ] || need+=(ca-certificates)
if [ ${#need[@]} -eq 0 ]; then
    echo "== host packages: all present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "missing host packages: ${need[*]} (run as root, or: apt-get install ${need[*]})" >&2
    exit 1
fi
echo "== installing host packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
# the host's own haproxy (installed for `haproxy -c`) must not run and hold ports
(service haproxy stop || pkill -x haproxy || true) >/dev/null 2>&1
