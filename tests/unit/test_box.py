"""The box builder's pure parts (lab/box.py): recipe hash, metadata, disk layout, MBR."""
import shutil
import struct
from pathlib import Path

import pytest

from lab import box

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def recipe_copy(tmp_path):
    dst = tmp_path / "box"
    shutil.copytree(REPO / "vagrant" / "box", dst)
    return dst


def test_recipe_hash_is_stable(recipe_copy):
    assert box.recipe_hash(recipe_copy) == box.recipe_hash(recipe_copy) == box.recipe_hash(box.RECIPE_DIR)


@pytest.mark.parametrize("change", ["packages.txt", "setup.sh", "grub.cfg", "rootfs/etc/ssh/sshd_config.d/vagrant.conf"])
def test_recipe_hash_changes_when_a_recipe_file_changes(recipe_copy, change):
    before = box.recipe_hash(recipe_copy)
    f = recipe_copy / change
    f.write_text(f.read_text() + "\n# changed\n")
    assert box.recipe_hash(recipe_copy) != before


def test_recipe_hash_changes_with_a_new_file_or_mode(recipe_copy):
    before = box.recipe_hash(recipe_copy)
    (recipe_copy / "rootfs/etc/motd").write_text("hello\n")
    added = box.recipe_hash(recipe_copy)
    assert added != before
    (recipe_copy / "rootfs/etc/motd").chmod(0o600)
    assert box.recipe_hash(recipe_copy) != added


def test_the_recipe_covers_what_vagrant_needs():
    pkgs = box.packages()
    for p in ("linux-image-amd64", "openssh-server", "sudo", "dbus", "rsync", "systemd-sysv"):
        assert p in pkgs
    assert all(" " not in p and "#" not in p for p in pkgs)
    rootfs = box.RECIPE_DIR / "rootfs/etc"
    assert "UseDNS no" in (rootfs / "ssh/sshd_config.d/vagrant.conf").read_text()
    assert "NOPASSWD: ALL" in (rootfs / "sudoers.d/vagrant").read_text()
    assert "vagrant insecure public key" in (box.RECIPE_DIR / "vagrant.pub").read_text()
    cfg = (box.RECIPE_DIR / "grub.cfg").read_text()
    assert "console=ttyS0" in cfg and "net.ifnames=0" in cfg and cfg.count("@ROOT_UUID@") == 2


def test_metadata_is_what_vagrant_libvirt_reads():
    assert box.metadata() == {"provider": "libvirt", "format": "qcow2", "virtual_size": 20}
    assert box.metadata(8)["virtual_size"] == 8


def test_disk_layout_of_20_gib():
    lay = box.disk_layout(20 * 2**30)
    assert lay["sectors"] == 41943040
    assert lay["part_start"] == 2048 and lay["fs_offset"] == 1048576
    assert lay["part_sectors"] == 41943040 - 2048
    assert lay["fs_blocks"] * 4096 <= lay["part_sectors"] * 512
    assert lay["fs_blocks"] == (20 * 2**30 - 2**20) // 4096
    assert lay["core_max_bytes"] == 2047 * 512


def test_disk_layout_rejects_partial_sectors():
    with pytest.raises(ValueError):
        box.disk_layout(2**30 + 1)


def test_mbr_partition_entry():
    code = bytes(range(256)) * 2
    sector = box.mbr(code, 2048, 41940992, 0x12345678)
    assert len(sector) == 512
    assert sector[:440] == code[:440]
    assert struct.unpack_from("<I", sector, 440)[0] == 0x12345678
    status, ptype, start, count = sector[446], sector[450], *struct.unpack_from("<II", sector, 454)
    assert (status, ptype, start, count) == (0x80, 0x83, 2048, 41940992)
    assert sector[462:510] == bytes(48)          # the other three entries are empty
    assert sector[510:] == b"\x55\xaa"


def test_a_box_without_its_record_is_not_cached(tmp_path):
    f = tmp_path / "airflow-debian12.box"
    assert box.built_recipe(f) is None
    f.write_bytes(b"x")
    assert box.built_recipe(f) is None
    f.with_suffix(".json").write_text('{"recipe": "abc"}')
    assert box.built_recipe(f) == "abc"


def test_the_smoke_vagrantfile_uses_the_box_and_the_driver(tmp_path):
    from lab import box_smoke
    text = box_smoke.VAGRANTFILE.format(box=box.BOX_NAME, ip="192.168.177.50", driver="qemu")
    assert 'c.vm.box = "airflow/debian12"' in text and 'lv.driver = "qemu"' in text
    assert 'type: "rsync"' in text and 'private_network", ip: "192.168.177.50"' in text
    if shutil.which("ruby"):
        import subprocess
        (tmp_path / "Vagrantfile").write_text(text)
        p = subprocess.run(["ruby", "-c", str(tmp_path / "Vagrantfile")], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
