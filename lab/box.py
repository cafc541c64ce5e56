"""A Debian 12 vagrant-libvirt box built here from the recipe in vagrant/box/ (`make box`).

The box is cached as STATE/boxes/airflow-debian12.box beside a .json that records the hash of
the recipe it was built from; the build is skipped while that hash matches (like the lab's base
image, lab/image.py). `--add` puts it into Vagrant as airflow/debian12 (skipped when Vagrant
already has this recipe's box); the repo's Vagrantfile uses it with AIRFLOW_VM_BOX=airflow/debian12.

No loop or nbd device is needed (containers often have none): the root file system is made
from the debootstrapped tree by `mkfs.ext4 -d` straight into a raw disk file at the partition's
offset, the MBR is written by hand, and GRUB's core image goes into the gap before the
partition, as grub-install would put it.

    python3 -m lab.box [--force] [--add]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import tarfile
import time
import uuid
from pathlib import Path

from .common import REPO, STATE, LabError, progress, record_timing, run
from .image import SALT_VERSION, node_pip_conf

RECIPE_DIR = REPO / "vagrant" / "box"
BOXES = STATE / "boxes"
BOX_NAME = "airflow/debian12"
BOX_FILE = "airflow-debian12.box"
SUITE = "bookworm"
MIRROR = os.environ.get("AIRFLOW_BOX_MIRROR", "http://deb.debian.org/debian")
DISK_GIB = 20                     # virtual size, as debian/bookworm64's; the qcow2 holds only data
SECTOR = 512
PARTITION_START_SECTOR = 2048     # 1 MiB: room for GRUB's core image, aligned like fdisk does
FS_BLOCK = 4096
GRUB_DIR = Path("/usr/lib/grub/i386-pc")
# biosdisk/part_msdos/ext2 find /boot/grub; the rest runs the grub.cfg of the recipe
GRUB_MODULES = ("biosdisk part_msdos ext2 normal configfile linux search search_fs_uuid "
                "serial terminal echo test").split()
BUILDER_VERSION = 1               # bump when the build steps below change what ends up in the box
HOST_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
              "mkfs.ext4": "e2fsprogs", "grub-mkimage": "grub-common", "qemu-img": "qemu-utils"}


def recipe_files(recipe_dir: Path = RECIPE_DIR) -> dict[str, str]:
    """Every file of the recipe (relative path -> sha256 of content and mode)."""
    out = {}
    for p in sorted(recipe_dir.rglob("*")):
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(recipe_dir))] = f"{digest}:{p.stat().st_mode & 0o777:o}"
    return out


def recipe(recipe_dir: Path = RECIPE_DIR) -> dict:
    return {"v": BUILDER_VERSION, "suite": SUITE, "mirror": MIRROR, "disk_gib": DISK_GIB,
            "grub_modules": GRUB_MODULES, "salt": SALT_VERSION, "files": recipe_files(recipe_dir)}


def recipe_hash(recipe_dir: Path = RECIPE_DIR) -> str:
    return hashlib.sha256(json.dumps(recipe(recipe_dir), sort_keys=True).encode()).hexdigest()[:16]


def packages(recipe_dir: Path = RECIPE_DIR) -> list[str]:
    lines = (recipe_dir / "packages.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def metadata(disk_gib: int = DISK_GIB) -> dict:
    # vagrant-libvirt reads virtual_size in GB and sizes the VM's disk volume from it
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": disk_gib}


def disk_layout(disk_bytes: int) -> dict:
    """One primary partition from 1 MiB to the end of the disk; the file system fills it."""
    if disk_bytes % SECTOR:
        raise ValueError("disk size must be a whole number of sectors")
    sectors = disk_bytes // SECTOR
    part_sectors = sectors - PARTITION_START_SECTOR
    fs_offset = PARTITION_START_SECTOR * SECTOR
    return {"sectors": sectors, "part_start": PARTITION_START_SECTOR, "part_sectors": part_sectors,
            "fs_offset": fs_offset, "fs_blocks": (part_sectors * SECTOR) // FS_BLOCK,
            "core_max_bytes": fs_offset - SECTOR}


def mbr(boot_code: bytes, part_start: int, part_sectors: int, disk_id: int) -> bytes:
    """Sector 0: GRUB's boot.img code, the disk id, one bootable Linux (0x83) partition, 55AA.

    CHS fields say "use LBA" (0xfe 0xff 0xff), as for any partition past 8 GiB."""
    chs_lba = b"\xfe\xff\xff"
    entry = struct.pack("<B3sB3sII", 0x80, chs_lba, 0x83, chs_lba, part_start, part_sectors)
    return (boot_code[:440] + struct.pack("<IH", disk_id, 0) + entry + bytes(16 * 3) + b"\x55\xaa")


def box_path() -> Path:
    return BOXES / BOX_FILE


def built_recipe(box: Path) -> str | None:
    info = box.with_suffix(".json")
    if box.is_file() and info.is_file():
        try:
            return json.loads(info.read_text()).get("recipe")
        except ValueError:
            return None
    return None


def check_host_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)}
                     | ({"grub-pc-bin"} if not (GRUB_DIR / "boot.img").is_file() else set()))
    if missing:
        raise LabError(f"missing host packages for the box build: apt-get install {' '.join(missing)}")


def mounts_under(path: Path) -> list[str]:
    """Mount points below path, deepest first (/proc/mounts escapes spaces as \\040)."""
    prefix = str(path.resolve()) + "/"
    points = [ln.split()[1].replace("\\040", " ") for ln in Path("/proc/mounts").read_text().splitlines()]
    return sorted((m for m in points if m.startswith(prefix)), key=len, reverse=True)


def remove_build_dir(tmp: Path) -> None:
    # debootstrap mounts /proc (and in some containers binds the host's /dev) in the target: a
    # failed build can leave them mounted, and rmtree would then delete through them
    for m in mounts_under(tmp):
        run(["umount", "-l", m], check=False)
    left = mounts_under(tmp)
    if left:
        raise LabError(f"box: still mounted, not deleting {tmp}: {', '.join(left)}")
    shutil.rmtree(tmp, ignore_errors=True)


def ensure_box(force: bool = False) -> Path:
    """Return the cached box, building it if its recipe changed (or force)."""
    box, want = box_path(), recipe_hash()
    if not force and built_recipe(box) == want:
        progress(f"box: cached {box} (recipe {want})")
        return box
    check_host_tools()
    BOXES.mkdir(parents=True, exist_ok=True)
    tmp = BOXES / f".build-{want}-{os.getpid()}"
    remove_build_dir(tmp)
    tmp.mkdir()
    t0 = time.monotonic()
    try:
        build(tmp, want)
        os.rename(tmp / BOX_FILE, box)
        dt = time.monotonic() - t0
        box.with_suffix(".json").write_text(json.dumps(
            {"recipe": want, "build_seconds": round(dt, 1), "bytes": box.stat().st_size,
             "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
    finally:
        remove_build_dir(tmp)
    record_timing("box_build", dt)
    progress(f"box: built {box} ({box.stat().st_size / 2**20:.0f} MiB) in {dt:.0f}s")
    return box


def build(tmp: Path, want: str) -> None:
    root, raw = tmp / "root", tmp / "disk.raw"
    t0 = time.monotonic()
    progress(f"box: debootstrap {SUITE} from {MIRROR} (recipe {want})")
    debs = BOXES / "debs"             # downloaded packages kept: a rebuild after a recipe change is faster
    debs.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--variant=minbase", f"--cache-dir={debs}", f"--include={','.join(packages())}",
         SUITE, str(root), MIRROR], timeout=1800)
    progress(f"box: debootstrap done in {time.monotonic() - t0:.0f}s; configuring")
    root_uuid = str(uuid.uuid4())
    # fstab before setup.sh, whose update-initramfs reads it
    (root / "etc/fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    configure_root(root)
    for m in mounts_under(root):      # mkfs.ext4 -d would copy a mounted /proc into the disk
        run(["umount", "-l", m])
    layout = disk_layout(DISK_GIB * 2**30)
    write_boot_files(root, root_uuid)
    progress("box: mkfs.ext4 -d (root file system into the disk file)")
    with open(raw, "wb") as f:
        f.truncate(layout["sectors"] * SECTOR)     # sparse: only written blocks take space
    # lazy init: the file is sparse, so the untouched inode tables and journal already read as zeros
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-b", str(FS_BLOCK), "-d", str(root),
         "-E", f"offset={layout['fs_offset']},lazy_itable_init=1,lazy_journal_init=1",
         str(raw), str(layout["fs_blocks"])], timeout=900)
    install_grub(tmp, raw, layout)
    progress("box: qemu-img convert -c (raw -> compressed qcow2)")
    img = tmp / "box.img"
    run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(img)], timeout=1800)
    raw.unlink()
    (tmp / "metadata.json").write_text(json.dumps(metadata()) + "\n")
    (tmp / "recipe.json").write_text(json.dumps({"recipe": want, **recipe()}, indent=1, sort_keys=True) + "\n")
    progress("box: packing the .box (tar)")
    # plain tar: box.img is compressed already, gzip would only cost time
    with tarfile.open(tmp / BOX_FILE, "w") as tar:
        for name in ("metadata.json", "recipe.json", "box.img"):
            tar.add(tmp / name, arcname=name)


def configure_root(root: Path) -> None:
    src = RECIPE_DIR / "rootfs"
    for p in sorted(src.rglob("*")):
        if p.is_file():
            dst = root / p.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)
            os.chmod(dst, 0o644)
    shutil.copyfile(RECIPE_DIR / "vagrant.pub", root / "var/tmp/vagrant.pub")
    # setup.sh upgrades from the network: the host's resolver for the time of the build
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    # pip (Salt) reaches PyPI the way this host does: its pip settings and CA bundle, bound in for
    # the build only (a TLS-inspecting proxy's CA stays out of the box)
    pip_conf = root.parent / "build-pip.conf"
    pip_conf.write_text(node_pip_conf())
    run(["systemd-nspawn", "-q", "-D", str(root), "-M", "airflow-box", "--register=no", "--keep-unit",
         "--resolv-conf=off", "--timezone=off", "--link-journal=no",
         f"--bind-ro={pip_conf}:/run/build-pip.conf", "--bind-ro=/etc/ssl/certs/ca-certificates.crt:/run/build-ca.crt",
         "--setenv=PIP_CONFIG_FILE=/run/build-pip.conf", "--setenv=PIP_CERT=/run/build-ca.crt",
         f"--setenv=SALT_VERSION={SALT_VERSION}",
         "/bin/sh", "-c", (RECIPE_DIR / "setup.sh").read_text()], timeout=1800)


def write_boot_files(root: Path, root_uuid: str) -> None:
    for link in ("vmlinuz", "initrd.img"):
        if not (root / link).exists():
            raise LabError(f"box: /{link} missing in the root (linux-image-amd64 not installed?)")
    grub = root / "boot/grub"
    shutil.copytree(GRUB_DIR, grub / "i386-pc", dirs_exist_ok=True)   # modules normal mode loads later
    (grub / "grub.cfg").write_text((RECIPE_DIR / "grub.cfg").read_text().replace("@ROOT_UUID@", root_uuid))


def install_grub(tmp: Path, raw: Path, layout: dict) -> None:
    """What grub-install does on a BIOS/MBR disk, without a block device."""
    core = tmp / "core.img"
    run(["grub-mkimage", "-O", "i386-pc", "-d", str(GRUB_DIR), "-o", str(core),
         "-p", "(hd0,msdos1)/boot/grub", *GRUB_MODULES])
    data = core.read_bytes()
    if len(data) > layout["core_max_bytes"]:
        raise LabError(f"box: GRUB core image ({len(data)} bytes) does not fit before the partition")
    boot = (GRUB_DIR / "boot.img").read_bytes()
    # boot.img loads sector 1 and grub-mkimage's blocklist reads the rest from sector 2 on: the
    # defaults match a core image written right after the MBR, so neither needs patching
    with open(raw, "r+b") as f:
        f.write(mbr(boot, layout["part_start"], layout["part_sectors"], int.from_bytes(os.urandom(4), "little")))
        f.seek(SECTOR)
        f.write(data)


def installed_recipe() -> str | None:
    """The recipe hash of the airflow/debian12 box Vagrant has (its recipe.json), if any."""
    home = Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))
    for f in (home / "boxes" / BOX_NAME.replace("/", "-VAGRANTSLASH-")).glob("*/libvirt/recipe.json"):
        try:
            return json.loads(f.read_text()).get("recipe")
        except ValueError:
            continue
    return None


def add_to_vagrant(box: Path) -> None:
    want = built_recipe(box)
    if want and installed_recipe() == want:
        progress(f"box: vagrant has {BOX_NAME} of recipe {want} already")
        return
    if not shutil.which("vagrant"):
        raise LabError("vagrant not installed (apt-get install vagrant vagrant-libvirt)")
    progress(f"box: vagrant box add --force --name {BOX_NAME} {box}")
    run(["vagrant", "box", "add", "--force", "--name", BOX_NAME, str(box)], capture=False, timeout=900)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lab.box", description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if the recipe did not change")
    ap.add_argument("--add", action="store_true", help=f"vagrant box add it as {BOX_NAME}")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("python3 -m lab.box: run as root (debootstrap, systemd-nspawn)")
        return 1
    try:
        box = ensure_box(force=a.force)
        if a.add:
            add_to_vagrant(box)
    except LabError as e:
        print(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
