"""The scheduler's ExecCondition guard (salt/airflow/files/scheduler-guard.py.jinja), executed for
real on a master with the Airflow venv's python, as the unit's user, against PostgreSQL.

(a) against the cluster's metastore on the standby master while the active scheduler heartbeats:
    it refuses (exit 1) and names the active master;
(b) against a scratch database on the lab's PostgreSQL (a `job` table with a SchedulerJob row of
    another host whose heartbeat is old, pointed at with a scratch airflow.cfg through
    AIRFLOW_CONFIG): it allows (exit 0), and its control: the same scratch row made fresh is
    refused (exit 1), so the scratch database was really read;
(c) against a metastore it cannot reach (a scratch airflow.cfg naming a closed port): it fails
    closed with exit 255 (systemd: failed, Restart= retries), never 0 (start) or 1 (skip).

Nothing of the running cluster changes: the guard only reads; the scratch role, database, pg_hba
lines and config are removed afterwards. Passwords go through stdin and files, never argv.
"""
import configparser
import re
import secrets
import shlex
import time
from urllib.parse import urlsplit

import pytest

MASTERS = ("master1", "master2")
DB_NODE = "infra"
SCRATCH = "airflow_guard_test"       # scratch role and database
HBA = "/etc/postgresql/15/main/pg_hba.conf"
HBA_BEGIN = f"# BEGIN {SCRATCH} (lab test, temporary) --"
HBA_END = f"# END {SCRATCH} (lab test, temporary) --"
OTHER = "old-scheduler.example"      # the hostname of the scheduler in the scratch job table

pytestmark = pytest.mark.timeout(300)


def sh(lab, node, script, check=True, timeout=120, input=None):
    return lab.exec_on(node, ["/bin/sh", "-c", script], check=check, timeout=timeout, input=input)


def psql(lab, sql, db="postgres", timeout=60):
    """SQL through psql's stdin as the postgres superuser on the db node (no secret on argv)."""
    return sh(lab, DB_NODE, f"runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -d {shlex.quote(db)}",
              timeout=timeout, input=sql).stdout


def wait_for(fn, timeout, every=1.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timeout {timeout}s waiting for {what} (last: {last!r})")


class Guard:
    """The guard as systemd runs it on a master: ExecCondition argv, User=, Environment=."""

    def __init__(self, lab, node):
        self.lab, self.node = lab, node
        out = sh(lab, node, "systemctl show -p ExecCondition,User,Environment airflow-scheduler").stdout
        props = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)
        # one ExecCondition= line per command: the dependency wait first, then the guard
        conditions = [ln for ln in out.splitlines() if ln.startswith("ExecCondition=")]
        m = next(filter(None, (re.search(r"argv\[\]=(.*?scheduler-guard\S*) ;", c) for c in conditions)), None)
        assert m, f"{node}: airflow-scheduler has no scheduler-guard ExecCondition: {conditions}"
        self.argv = m.group(1).split()
        self.user = props.get("User") or "root"
        self.env = props.get("Environment", "").split()
        self.script = self.argv[-1]
        src = sh(lab, node, f"cat {shlex.quote(self.script)}").stdout
        m = re.search(r"^STALE_SECONDS = (\d+)", src, re.M)
        self.stale = int(m.group(1)) if m else 15
        self.knows_airflow_config = "AIRFLOW_CONFIG" in src

    def run(self, extra_env=()):
        cmd = ["runuser", "-u", self.user, "--", "env", *self.env, *extra_env, *self.argv]
        p = self.lab.exec_on(self.node, cmd, check=False, timeout=90)
        return p.returncode, (p.stdout + p.stderr).strip()


def scheduler_jobs(lab, dbname):
    """[(host, heartbeat age s)] of running SchedulerJobs in the cluster's metastore, newest first."""
    out = psql(lab, "SELECT hostname, EXTRACT(EPOCH FROM (now() - latest_heartbeat)) FROM job "
                    "WHERE job_type = 'SchedulerJob' AND state = 'running' ORDER BY latest_heartbeat DESC;",
               db=dbname)
    return [(h, float(a)) for h, a in (ln.split("|") for ln in out.splitlines() if "|" in ln)]


@pytest.fixture(scope="module")
def placement(lab):
    """(active master, standby master, metastore database name)."""
    states = {m: sh(lab, m, "systemctl is-active airflow-scheduler", check=False).stdout.strip()
              for m in MASTERS}
    active = [m for m, s in states.items() if s == "active"]
    if len(active) != 1:
        pytest.skip(f"needs exactly one active scheduler (active-standby mode), found {states}")
    standby = [m for m in MASTERS if m != active[0]][0]
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(sh(lab, standby, "cat /opt/airflow/airflow.cfg").stdout)
    dbname = urlsplit(cfg.get("database", "sql_alchemy_conn")).path.lstrip("/")
    return active[0], standby, dbname


def test_guard_refuses_while_the_active_scheduler_heartbeats(lab, placement, results_file):
    active, standby, dbname = placement
    guard = Guard(lab, standby)
    # precondition, read from the metastore: the active master's scheduler heartbeat is fresh
    # (younger than half the guard's threshold: with stale 6 a fixed margin would leave none)
    jobs = wait_for(lambda: (lambda j: j and j[0][0].split(".")[0] == active and j[0][1] < guard.stale / 2 and j)(
        scheduler_jobs(lab, dbname)), 60, 1, f"a fresh heartbeat of {active}'s scheduler")
    rc, out = guard.run()
    print(f"guard on {standby}: rc={rc}: {out}")
    assert rc == 1, out
    assert "refusing" in out and active in out, out
    results_file("scheduler-guard", {"case": "live_cluster_refuses", "node": standby, "rc": rc,
                                     "active": active, "heartbeat_age_s": round(jobs[0][1], 1)})


@pytest.fixture()
def scratch_db(lab, placement):
    """A scratch role + database on the lab's PostgreSQL, reachable from the standby master with a
    SCRAM password (temporary pg_hba lines), and a scratch airflow.cfg on that master that points at
    it. Yields (guard, AIRFLOW_CONFIG path); removes everything afterwards."""
    active, standby, _ = placement
    guard = Guard(lab, standby)
    if not guard.knows_airflow_config:
        pytest.skip(f"the scheduler guard installed on {standby} ({guard.script}) has no AIRFLOW_CONFIG "
                    "override yet: apply the formula's guard with it (state.apply airflow on the masters)")
    password = secrets.token_hex(16)
    cfgdir = f"/run/{SCRATCH}"
    cfgfile = f"{cfgdir}/airflow.cfg"

    def hba(add):
        # one python run on the db node edits pg_hba.conf: drop our block, append it again if add
        script = (
            "import sys\n"
            "p, b, e, line, add = sys.argv[1:6]\n"
            "out, skip = [], False\n"
            "for ln in open(p).read().splitlines():\n"
            "    if ln == b: skip = True\n"
            "    elif ln == e: skip = False\n"
            "    elif not skip: out.append(ln)\n"
            "if add == '1': out += [b, line, e]\n"
            "open(p, 'w').write('\\n'.join(out) + '\\n')\n")
        line = f"host    {SCRATCH}    {SCRATCH}    {lab.node_ip(standby)}/32    scram-sha-256"
        lab.exec_on(DB_NODE, ["python3", "-c", script, HBA, HBA_BEGIN, HBA_END, line, "1" if add else "0"])
        psql(lab, "SELECT pg_reload_conf();")

    def cleanup():
        psql(lab, f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE);\nDROP ROLE IF EXISTS {SCRATCH};\n")
        hba(False)
        sh(lab, standby, f"rm -rf {cfgdir}", check=False)

    cleanup()  # leftovers of an interrupted run
    try:
        psql(lab, f"CREATE ROLE {SCRATCH} LOGIN PASSWORD '{password}';\n"
                  f"CREATE DATABASE {SCRATCH} OWNER {SCRATCH};\n")
        psql(lab, f"SET ROLE {SCRATCH};\n"
                  "CREATE TABLE job (id serial PRIMARY KEY, dag_id varchar(250), state varchar(20),\n"
                  "  job_type varchar(30), start_date timestamptz, end_date timestamptz,\n"
                  "  latest_heartbeat timestamptz, executor_class varchar(500), hostname varchar(500),\n"
                  "  unixname varchar(1000));\n", db=SCRATCH)
        hba(True)
        cfg = ("[database]\n"
               f"sql_alchemy_conn = postgresql+psycopg2://{SCRATCH}:{password}@{lab.node_ip(DB_NODE)}:5432/{SCRATCH}\n")
        sh(lab, standby, f"install -d -m 0700 -o {shlex.quote(guard.user)} {cfgdir} && "
                         f"runuser -u {shlex.quote(guard.user)} -- sh -c 'umask 077; cat > {cfgfile}'", input=cfg)
        yield guard, cfgfile
    finally:
        cleanup()
        left = psql(lab, f"SELECT count(*) FROM pg_database WHERE datname = '{SCRATCH}';").strip()
        assert left == "0", f"scratch database {SCRATCH} still there"


def test_guard_allows_when_the_other_heartbeat_is_stale(lab, placement, scratch_db, results_file):
    active, standby, _ = placement
    guard, cfgfile = scratch_db
    env = [f"AIRFLOW_CONFIG={cfgfile}"]
    me = sh(lab, standby, f"runuser -u {shlex.quote(guard.user)} -- {shlex.quote(guard.argv[0])} -c "
                          "'import socket; print(socket.getfqdn())'").stdout.strip()
    old = guard.stale * 40
    # another host's scheduler, last heartbeat long ago; and this host's own fresh one (not "another")
    psql(lab, "INSERT INTO job (state, job_type, start_date, latest_heartbeat, hostname) VALUES\n"
              f"  ('running', 'SchedulerJob', now() - interval '1 hour', now() - interval '{old} seconds', '{OTHER}'),\n"
              f"  ('running', 'SchedulerJob', now(), now(), '{me}');\n", db=SCRATCH)
    rc, out = guard.run(env)
    print(f"guard on {standby}, {OTHER} stale by {old}s: rc={rc}: {out}")
    assert rc == 0, out
    # allowed because it read the table (an unreadable one exits 255, see the test below)
    assert "no other live scheduler" in out, out

    # control: the same row made fresh is refused, so the scratch database was really read
    psql(lab, f"UPDATE job SET latest_heartbeat = now() WHERE hostname = '{OTHER}';\n", db=SCRATCH)
    rc2, out2 = guard.run(env)
    print(f"guard on {standby}, {OTHER} fresh: rc={rc2}: {out2}")
    assert rc2 == 1 and OTHER in out2 and "refusing" in out2, out2
    results_file("scheduler-guard", {"case": "scratch_db_stale_allows", "node": standby, "rc": rc,
                                     "stale_by_s": old, "control_fresh_rc": rc2})


def test_guard_fails_closed_when_the_metastore_is_unreachable(lab, placement, results_file):
    """(c): nothing listens on 127.0.0.1:1 on the master; no real password in the scratch config."""
    _, standby, _ = placement
    guard = Guard(lab, standby)
    if not guard.knows_airflow_config:
        pytest.skip(f"the scheduler guard installed on {standby} has no AIRFLOW_CONFIG override yet")
    cfgdir = f"/run/{SCRATCH}-unreachable"
    cfgfile = f"{cfgdir}/airflow.cfg"
    cfg = "[database]\nsql_alchemy_conn = postgresql+psycopg2://nobody:x@127.0.0.1:1/nothing\n"
    try:
        sh(lab, standby, f"install -d -m 0700 -o {shlex.quote(guard.user)} {cfgdir} && "
                         f"runuser -u {shlex.quote(guard.user)} -- sh -c 'cat > {cfgfile}'", input=cfg)
        rc, out = guard.run([f"AIRFLOW_CONFIG={cfgfile}"])
    finally:
        sh(lab, standby, f"rm -rf {cfgdir}", check=False)
    print(f"guard on {standby}, metastore unreachable: rc={rc}: {out}")
    assert rc == 255, out
    assert "not starting" in out, out
    results_file("scheduler-guard", {"case": "unreachable_fails_closed", "node": standby, "rc": rc})
