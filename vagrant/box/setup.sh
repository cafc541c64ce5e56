# Runs inside the debootstrapped root (systemd-nspawn, the host's network) before it becomes the disk.
# (nspawn mounts a tmpfs on /tmp: files for this script come in /var/tmp)
set -eu
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# the packages debootstrap took from the release, brought to the point releases and security fixes
apt-get update -q
apt-get -y -q -o Dpkg::Options::=--force-confold upgrade
# (before resolv.conf becomes resolved's stub below: the build has no resolved)
# Salt from PyPI into /opt/saltstack, what the Vagrantfile's INSTALL_SALT does on a box without it:
# under software emulation that pip install is the slowest step of a VM's bring-up (~15 min)
python3 -m venv /opt/saltstack
/opt/saltstack/bin/pip install --no-input -q --disable-pip-version-check "salt==${SALT_VERSION}"
# the vagrant user: password "vagrant", Vagrant's well-known insecure key (vagrant replaces it on
# the first `vagrant up`), sudo without a password
id vagrant >/dev/null 2>&1 || useradd -m -s /bin/bash -U vagrant
echo 'vagrant:vagrant' | chpasswd
install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 600 -o vagrant -g vagrant /var/tmp/vagrant.pub /home/vagrant/.ssh/authorized_keys
rm -f /var/tmp/vagrant.pub
chmod 440 /etc/sudoers.d/vagrant
echo 'root:vagrant' | chpasswd
systemctl enable systemd-networkd.service systemd-resolved.service systemd-timesyncd.service ssh.service
systemctl enable serial-getty@ttyS0.service
# nothing waits for the private networks Vagrant configures after boot
systemctl mask systemd-networkd-wait-online.service
ln -sf ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
# with the fstab entry and conf.d/root-fstype in place the initramfs gets fsck.ext4 for the root
update-initramfs -u -k all
# per-VM identity is made at first boot: machine-id (systemd), SSH host keys (ssh.service drop-in)
rm -f /etc/ssh/ssh_host_*
rm -f /etc/machine-id /var/lib/dbus/machine-id; : > /etc/machine-id
apt-get clean; rm -rf /var/lib/apt/lists/* /root/.cache /var/log/*.log /var/tmp/*
