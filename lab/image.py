"""Base image: debootstrapped Debian 12 with Salt installed from PyPI (as a user would).

Cached under STATE/images/<recipe hash>/ ; rebuilt only when the recipe changes.
Built into a temp dir, then renamed atomically.
"""
from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from .common import IMAGES, LabError, progress, record_timing, run

SUITE = "bookworm"
SALT_VERSION = "3008.3"
INCLUDE = ("systemd,systemd-sysv,dbus,iproute2,ca-certificates,python3,python3-venv,python3-dev,"
           "gcc,procps,curl,less,iputils-ping,psmisc")
SALT_BINS = ("salt", "salt-call", "salt-run", "salt-key", "salt-master", "salt-minion")

UNIT = """[Unit]
Description=The Salt {what}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
LimitNOFILE=16384
ExecStart=/opt/saltstack/bin/salt-{what}
Restart=on-failure
RestartSec=2
{extra}
[Install]
WantedBy=multi-user.target
"""

SETUP = r"""set -eu
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
update-ca-certificates >/dev/null
python3 -m venv /opt/saltstack
/opt/saltstack/bin/pip install --no-input -q "salt=={salt}"
for b in {bins}; do ln -sf /opt/saltstack/bin/$b /usr/local/bin/$b; done
mkdir -p /etc/salt/master.d /etc/salt/minion.d /etc/salt/pki
systemctl disable salt-master.service salt-minion.service >/dev/null 2>&1 || true
# nodes are containers: nothing to do for these
systemctl mask systemd-timesyncd.service systemd-networkd-wait-online.service \
  getty@tty1.service console-getty.service apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
rm -f /etc/machine-id /var/lib/dbus/machine-id; : > /etc/machine-id
apt-get clean; rm -rf /var/lib/apt/lists/* /root/.cache
echo 'LANG=C.UTF-8' > /etc/default/locale
"""


def host_mirror() -> str:
    """The host's Debian mirror (deb822 or one-line sources), default deb.debian.org."""
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if p.is_file() and (p.suffix in (".list", ".sources") or p.name == "sources.list"):
            texts.append(p.read_text(errors="replace"))
    for t in texts:
        for m in re.finditer(r"(?:URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", t, re.M):
            uri = m.group(1).rstrip("/")
            if uri.startswith("http") and "security" not in uri and uri.endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def host_ca_certs() -> dict[str, bytes]:
    d = Path("/usr/local/share/ca-certificates")
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*.crt"))} if d.is_dir() else {}


def node_pip_conf() -> str:
    """pip config for the nodes, derived from the host's (files + PIP_* env).

    Only settings that make sense inside a node are kept: the CA bundle, timeouts and
    http(s) indexes. file:// indexes, local find-links and constraint files of the host
    are not available in nodes and are dropped.
    """
    cp = configparser.ConfigParser()
    cp.read(["/etc/pip.conf", "/etc/xdg/pip/pip.conf", os.path.expanduser("~/.config/pip/pip.conf"),
             os.path.expanduser("~/.pip/pip.conf")])
    conf = {}
    for sect in ("global", "install"):
        if cp.has_section(sect):
            conf.update(dict(cp.items(sect)))
    for k, v in os.environ.items():
        if k.startswith("PIP_"):
            conf[k[4:].lower().replace("_", "-")] = v
    out = {}
    for k in ("index-url", "extra-index-url", "trusted-host"):
        if k in conf:
            vals = [v for v in conf[k].split() if not v.startswith("file:")]
            if vals:
                out[k] = " ".join(vals)
    for k in ("default-timeout", "timeout", "retries", "disable-pip-version-check", "proxy"):
        if k in conf:
            out[k] = conf[k]
    out["cert"] = "/etc/ssl/certs/ca-certificates.crt"
    return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(out.items()))


def recipe() -> dict:
    return {
        "v": 3, "suite": SUITE, "mirror": host_mirror(), "include": INCLUDE, "salt": SALT_VERSION,
        "setup": SETUP, "unit": UNIT,
        "ca": {k: hashlib.sha256(v).hexdigest() for k, v in host_ca_certs().items()},
        "pip": node_pip_conf(),
    }


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def image_path() -> Path:
    return IMAGES / recipe_hash()


def ensure_image(force: bool = False) -> Path:
    """Return the rootfs of the current image, building it if its recipe changed."""
    final = image_path()
    if final.is_dir() and not force:
        progress(f"image: cached {final.name}")
        return final
    IMAGES.mkdir(parents=True, exist_ok=True)
    tmp = IMAGES / f".build-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    r = recipe()
    progress(f"image: debootstrap {SUITE} from {r['mirror']} (recipe {final.name})")
    try:
        run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(tmp), r["mirror"]],
            timeout=1200)
        progress(f"image: debootstrap done in {time.monotonic() - t0:.0f}s; installing salt=={SALT_VERSION}")
        for name, data in host_ca_certs().items():
            dst = tmp / "usr/local/share/ca-certificates" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
        (tmp / "etc/pip.conf").write_text(r["pip"])
        units = tmp / "etc/systemd/system"
        (units / "salt-master.service").write_text(UNIT.format(what="master", extra=""))
        (units / "salt-minion.service").write_text(UNIT.format(what="minion", extra="KillMode=process\n"))
        shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
        script = SETUP.replace("{salt}", SALT_VERSION).replace("{bins}", " ".join(SALT_BINS))
        run(["systemd-nspawn", "-q", "-D", str(tmp), "-M", "airlab-image", "--register=no", "--keep-unit",
             "--resolv-conf=off",
             "--timezone=off", "--link-journal=no", "/bin/sh", "-c", script], timeout=1200)
        (tmp / "etc/resolv.conf").unlink(missing_ok=True)
        (tmp / "etc/hostname").unlink(missing_ok=True)
        (tmp / ".lab-recipe.json").write_text(json.dumps(r, indent=1, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_images(keep=final)
    dt = time.monotonic() - t0
    record_timing("image_build", dt)
    progress(f"image: built {final.name} in {dt:.0f}s")
    return final


def prune_images(keep: Path) -> None:
    """Delete images of older recipes that no node's overlay uses any more."""
    from .common import NODES_DIR
    used = {keep.resolve()}
    if NODES_DIR.is_dir():
        for f in NODES_DIR.glob("*/image"):
            used.add(Path(f.read_text().strip()).resolve())
    for p in IMAGES.iterdir():
        if p.is_dir() and not p.name.startswith(".") and p.resolve() not in used:
            progress(f"image: removing unused old image {p.name}")
            shutil.rmtree(p, ignore_errors=True)


def purge_images() -> None:
    shutil.rmtree(IMAGES, ignore_errors=True)


def latest_image() -> Path:
    """Image to use for nodes: the current recipe's, or fail."""
    p = image_path()
    if not p.is_dir():
        raise LabError("no base image; run `python3 -m lab up` (or `image`)")
    return p
