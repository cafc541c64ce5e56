#!/usr/bin/env bash
# Host packages `make box` needs on Debian 12 (root): the build (debootstrap, systemd-nspawn,
# mkfs.ext4 -d, GRUB's BIOS images, qemu-img) and Vagrant's libvirt provider to add and boot it.
# Installs only what is missing, like tools/host-deps.sh.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have debootstrap || need+=(debootstrap)
have systemd-nspawn || need+=(systemd-container)
have mkfs.ext4 || need+=(e2fsprogs)
have grub-mkimage || need+=(grub-common)
[ -e /usr/lib/grub/i386-pc/boot.img ] || need+=(grub-pc-bin)
have qemu-img || need+=(qemu-utils)
have vagrant || need+=(vagrant)
vagrant plugin list 2>/dev/null | grep -q vagrant-libvirt || need+=(vagrant-libvirt)
have libvirtd || need+=(libvirt-daemon-system)
have qemu-system-x86_64 || need+=(qemu-system-x86)
# libvirt's NAT network (`default`, the VMs' management network) runs dnsmasq, only a Recommends
have dnsmasq || need+=(dnsmasq-base)
if [ ${#need[@]} -eq 0 ]; then
    echo "== box host packages: all present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "missing host packages: ${need[*]} (run as root, or: apt-get install ${need[*]})" >&2
    exit 1
fi
echo "== installing box host packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
