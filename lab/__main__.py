"""CLI: python3 -m lab up|down|status|deploy|image|exec|stop-node|start-node|add-node|remove-node|pin-tree|unpin-tree."""
from __future__ import annotations

import argparse
import subprocess
import sys

from . import api, image, nodes
from .common import LabError, need_root, progress


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lab", description="Airflow-on-Salt systemd-nspawn lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="build image if needed, boot nodes, set up salt, deploy (idempotent)")
    p.add_argument("--no-deploy", action="store_true", help="stop after salt setup")
    sub.add_parser("deploy", help="salt-run state.orchestrate orch.deploy")
    p = sub.add_parser("down", help="remove the lab (keeps the image cache)")
    p.add_argument("--purge", action="store_true", help="also delete image cache, secrets, pip cache")
    sub.add_parser("status", help="nodes, IPs, running, key state")
    p = sub.add_parser("image", help="build the base image (if its recipe changed)")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("exec", help="run a command in a node: exec NODE -- CMD...")
    p.add_argument("node")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("stop-node", help="power a node off (default: hard, like a pulled plug)")
    p.add_argument("node")
    p.add_argument("--graceful", action="store_true")
    p = sub.add_parser("start-node", help="boot a stopped node again (same overlay, same IP)")
    p.add_argument("node")
    p = sub.add_parser("add-node", help="boot a new node, install+accept its minion (no deploy)")
    p.add_argument("name")
    p.add_argument("--roles", default="", help="comma separated, e.g. airflow-worker")
    p.add_argument("--ip", required=True)
    p = sub.add_parser("remove-node", help="destroy a node and delete its salt key")
    p.add_argument("name")
    p = sub.add_parser("pin-tree", help="salt master serves a snapshot of commit REV, not the live checkout")
    p.add_argument("rev")
    sub.add_parser("unpin-tree", help="salt master serves the live checkout again")
    a = ap.parse_args(argv)
    need_root()
    try:
        if a.cmd == "up":
            api.lab_up(deploy=not a.no_deploy)
        elif a.cmd == "deploy":
            api.lab_deploy()
        elif a.cmd == "down":
            api.lab_down(purge=a.purge)
        elif a.cmd == "image":
            image.ensure_image(force=a.force)
        elif a.cmd == "status":
            rows = api.status()
            print(f"{'NODE':10} {'IP':12} {'STATE':8} {'KEY':9} {'CGROUP':22} ROLES")
            for r in rows:
                print(f"{r['node']:10} {r['ip']:12} {'running' if r['running'] else 'stopped':8} "
                      f"{r['key']:9} {r['cgroup']:22} {r['roles']}")
            pin = api.pinned_tree()
            print(f"/srv/airflow on salt: {'pinned to ' + pin if pin else 'live checkout'}")
        elif a.cmd == "exec":
            cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
            if not cmd:
                ap.error("exec NODE -- CMD...")
            return subprocess.call(nodes.nsenter_argv(a.node, cmd))
        elif a.cmd == "stop-node":
            api.stop_node(a.node, hard=not a.graceful)
        elif a.cmd == "start-node":
            api.start_node(a.node)
        elif a.cmd == "add-node":
            api.add_node(a.name, [r for r in a.roles.split(",") if r], a.ip)
        elif a.cmd == "remove-node":
            api.remove_node(a.name)
        elif a.cmd == "pin-tree":
            print(api.pin_tree(a.rev))
        elif a.cmd == "unpin-tree":
            api.unpin_tree()
    except LabError as e:
        progress(f"ERROR: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
