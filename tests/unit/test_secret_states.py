"""The formula's own state modules that keep passwords off command lines (_states/), with a fake
__salt__: the password (or its SCRAM verifier) is never in argv, only on stdin; test=True changes
nothing; an unchanged user/role costs no change."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name, rel):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rmq = _load("airflow_rabbitmq_state", "_states/airflow_rabbitmq.py")
pg = _load("airflow_postgres_state", "_states/airflow_postgres.py")

PASSWORD = "s3cret-Pw/with%chars"


class FakeRabbit:
    """rabbitmqctl with one user table; records every call."""

    def __init__(self, users=None, perms=None, stdin_supported=True):
        self.users = dict(users or {})  # name -> password
        self.perms = dict(perms or {})  # (user, vhost) -> (c, w, r)
        self.stdin_supported = stdin_supported
        self.calls = []

    def run_all(self, cmd, python_shell=True, stdin=None, **kwargs):
        assert python_shell is False and kwargs.get("output_loglevel") == "quiet"
        self.calls.append({"argv": list(cmd), "stdin": stdin})
        verb, args = cmd[1], cmd[2:]
        if verb in ("authenticate_user", "add_user", "change_password") and len(args) == 1:
            if not self.stdin_supported:
                return {"retcode": 64, "stdout": "", "stderr": "Error (argument validation): not enough arguments"}
            pw = (stdin or "").strip()
            name = args[0]
            if verb == "authenticate_user":
                ok = self.users.get(name) == pw
                return {"retcode": 0 if ok else 65, "stdout": "", "stderr": "" if ok else "Error: failed"}
            self.users[name] = pw
            return {"retcode": 0, "stdout": "", "stderr": ""}
        if verb == "set_permissions":
            _p, vhost, user, c, w, r = args
            self.perms[(user, vhost)] = (c, w, r)
            return {"retcode": 0, "stdout": "", "stderr": ""}
        raise AssertionError(f"unexpected rabbitmqctl call {cmd}")

    def list_users(self):
        return {name: ["administrator"] if name == "guest" else [] for name in self.users}

    def list_user_permissions(self, name):
        return {vhost: {"configure": c, "write": w, "read": r}
                for (user, vhost), (c, w, r) in self.perms.items() if user == name}


@pytest.fixture
def rabbit(monkeypatch):
    def make(test=False, **kw):
        fake = FakeRabbit(**kw)
        monkeypatch.setattr(rmq, "__salt__", {"cmd.run_all": fake.run_all,
                                              "rabbitmq.list_users": fake.list_users,
                                              "rabbitmq.list_user_permissions": fake.list_user_permissions},
                            raising=False)
        monkeypatch.setattr(rmq, "__opts__", {"test": test}, raising=False)
        return fake
    return make


PERMS = [{"airflow": [".*", ".*", ".*"]}]


def _no_secret_in_argv(calls, secret=PASSWORD):
    for call in calls:
        assert not any(secret in str(a) for a in call["argv"]), call["argv"]


def test_rabbitmq_creates_user_with_password_on_stdin(rabbit):
    fake = rabbit()
    ret = rmq.user_present("airflow", PASSWORD, perms=PERMS)
    assert ret["result"] is True and set(ret["changes"]) == {"user", "perms"}
    assert fake.users["airflow"] == PASSWORD
    assert fake.perms[("airflow", "airflow")] == (".*", ".*", ".*")
    _no_secret_in_argv(fake.calls)
    add = [c for c in fake.calls if c["argv"][1] == "add_user"]
    assert add == [{"argv": ["rabbitmqctl", "add_user", "airflow"], "stdin": PASSWORD + "\n"}]
    assert PASSWORD not in repr(ret)


def test_rabbitmq_unchanged_user_is_no_change(rabbit):
    fake = rabbit(users={"airflow": PASSWORD}, perms={("airflow", "airflow"): (".*", ".*", ".*")})
    ret = rmq.user_present("airflow", PASSWORD, perms=PERMS)
    assert ret == {"name": "airflow", "result": True, "changes": {},
                   "comment": "RabbitMQ user airflow is in the correct state"}
    # the check itself is an authentication with the password on stdin
    assert [c["argv"] for c in fake.calls] == [["rabbitmqctl", "authenticate_user", "airflow"]]
    assert fake.calls[0]["stdin"] == PASSWORD + "\n"


def test_rabbitmq_wrong_password_is_changed_on_stdin(rabbit):
    fake = rabbit(users={"airflow": "old"}, perms={("airflow", "airflow"): (".*", ".*", ".*")})
    ret = rmq.user_present("airflow", PASSWORD, perms=PERMS)
    assert ret["result"] is True and ret["changes"] == {"password": "changed"}
    assert fake.users["airflow"] == PASSWORD
    _no_secret_in_argv(fake.calls)
    assert ["rabbitmqctl", "change_password", "airflow"] in [c["argv"] for c in fake.calls]


def test_rabbitmq_test_mode_changes_nothing(rabbit):
    fake = rabbit(test=True, users={"airflow": "old"}, perms={("airflow", "airflow"): ("x", "x", "x")})
    ret = rmq.user_present("airflow", PASSWORD, perms=PERMS)
    assert ret["result"] is None
    assert ret["changes"]["password"] == "changed"
    assert ret["changes"]["perms"]["airflow"] == {"old": ["x", "x", "x"], "new": [".*", ".*", ".*"]}
    assert fake.users["airflow"] == "old" and fake.perms[("airflow", "airflow")] == ("x", "x", "x")
    assert all(c["argv"][1] == "authenticate_user" for c in fake.calls)
    fake = rabbit(test=True)
    ret = rmq.user_present("airflow", PASSWORD, perms=PERMS)
    assert ret["result"] is None and "user" in ret["changes"]
    assert fake.users == {} and fake.calls == []


def test_rabbitmq_without_stdin_support_refuses_argv(rabbit):
    fake = rabbit(users={"airflow": PASSWORD}, stdin_supported=False)
    ret = rmq.user_present("airflow", PASSWORD, perms=PERMS)
    assert ret["result"] is False and "refusing to put it on the command line" in ret["comment"]
    _no_secret_in_argv(fake.calls)
    assert len(fake.calls) == 1


def test_rabbitmq_rejects_password_rabbitmqctl_would_mangle(rabbit):
    rabbit()
    for bad in ("", " padded", "two\nlines", None):
        assert rmq.user_present("airflow", bad)["result"] is False


# ------------------------------------------------------------------ PostgreSQL
class FakePsql:
    """psql as postgres: one pg_authid table; parses the few statements the state sends."""

    def __init__(self, roles=None):
        self.roles = dict(roles or {})  # name -> (canlogin, rolpassword)
        self.calls = []

    def run_all(self, cmd, python_shell=True, stdin=None, **kwargs):
        assert python_shell is False and kwargs.get("output_loglevel") == "quiet"
        self.calls.append({"argv": list(cmd), "stdin": stdin})
        assert cmd[:4] == ["runuser", "-u", "postgres", "--"] and cmd[-2:] == ["--file", "-"]
        sql = stdin.strip()
        if sql.startswith("SELECT"):
            name = sql.split("rolname = '", 1)[1].rsplit("'", 1)[0].replace("''", "'")
            if name not in self.roles:
                return {"retcode": 0, "stdout": "", "stderr": ""}
            login, pw = self.roles[name]
            return {"retcode": 0, "stdout": f"{'t' if login else 'f'}|{pw}\n", "stderr": ""}
        verb, _role, rest = sql.split(" ", 2)
        name = rest.split('"', 2)[1]
        login = " LOGIN" in rest
        pw = rest.split("PASSWORD '", 1)[1].split("'", 1)[0] if "PASSWORD '" in rest else self.roles[name][1]
        self.roles[name] = (login, pw)
        return {"retcode": 0, "stdout": "", "stderr": ""}


@pytest.fixture
def psql(monkeypatch):
    def make(test=False, **kw):
        fake = FakePsql(**kw)
        monkeypatch.setattr(pg, "__salt__", {"cmd.run_all": fake.run_all}, raising=False)
        monkeypatch.setattr(pg, "__opts__", {"test": test}, raising=False)
        return fake
    return make


def test_scram_verifier_matches_postgresql_format():
    v = pg.scram_verifier(PASSWORD, salt_bytes=b"0123456789abcdef")
    assert v.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert pg.verifier_matches(PASSWORD, v)
    assert not pg.verifier_matches("other", v)
    assert not pg.verifier_matches(PASSWORD, "md5" + "0" * 32) and not pg.verifier_matches(PASSWORD, "")


def test_postgres_creates_role_verifier_on_stdin_only(psql):
    fake = psql()
    ret = pg.role_present("airflow_results", PASSWORD, port=5432)
    assert ret["result"] is True and ret["changes"] == {"role": {"old": None, "new": "airflow_results"}}
    login, stored = fake.roles["airflow_results"]
    assert login and pg.verifier_matches(PASSWORD, stored)
    for call in fake.calls:
        assert not any(PASSWORD in a or "SCRAM" in a for a in call["argv"]), call["argv"]
        assert PASSWORD not in call["stdin"]  # only the verifier is sent, never the plaintext
    assert stored in fake.calls[-1]["stdin"]
    assert fake.calls[-1]["stdin"].startswith('CREATE ROLE "airflow_results" WITH LOGIN PASSWORD \'SCRAM-SHA-256$')
    assert PASSWORD not in repr(ret)


def test_postgres_unchanged_role_is_no_change(psql):
    fake = psql(roles={"airflow": (True, pg.scram_verifier(PASSWORD))})
    ret = pg.role_present("airflow", PASSWORD)
    assert ret["result"] is True and ret["changes"] == {}
    assert len(fake.calls) == 1 and fake.calls[0]["stdin"].startswith("SELECT")


def test_postgres_changed_password_and_login(psql):
    fake = psql(roles={"airflow": (False, pg.scram_verifier("old"))})
    ret = pg.role_present("airflow", PASSWORD)
    assert set(ret["changes"]) == {"password", "login"} and ret["changes"]["password"] == "changed"
    assert fake.roles["airflow"][0] is True and pg.verifier_matches(PASSWORD, fake.roles["airflow"][1])
    assert fake.calls[-1]["stdin"].startswith('ALTER ROLE "airflow" WITH LOGIN PASSWORD')
    # md5 or no password at all: replaced by a SCRAM verifier
    fake = psql(roles={"airflow": (True, "md5" + "0" * 32)})
    assert pg.role_present("airflow", PASSWORD)["changes"] == {"password": "changed"}


def test_postgres_test_mode_changes_nothing(psql):
    fake = psql(test=True, roles={"airflow": (True, pg.scram_verifier("old"))})
    before = dict(fake.roles)
    ret = pg.role_present("airflow", PASSWORD)
    assert ret["result"] is None and ret["changes"] == {"password": "changed"}
    assert fake.roles == before and len(fake.calls) == 1 and fake.calls[0]["stdin"].startswith("SELECT")


def test_postgres_quotes_identifiers_and_literals(psql):
    fake = psql()
    pg.role_present('we"ird\'name', PASSWORD)
    assert "rolname = 'we\"ird''name'" in fake.calls[0]["stdin"]
    assert fake.calls[1]["stdin"].startswith('CREATE ROLE "we""ird\'name" WITH LOGIN')


def test_test_mode_predicts_a_change_where_the_server_is_not_up_yet(psql, rabbit, monkeypatch):
    fake = psql(test=True)
    monkeypatch.setattr(pg, "__salt__", {"cmd.run_all": lambda *a, **k: {
        "retcode": 2, "stdout": "", "stderr": "psql: error: connection to server on socket failed"}})
    ret = pg.role_present("airflow", PASSWORD)
    assert ret["result"] is None and ret["changes"]
    monkeypatch.setattr(pg, "__opts__", {"test": False})
    assert pg.role_present("airflow", PASSWORD)["result"] is False
    rabbit(test=True)

    def down():
        raise RuntimeError("Error: unable to perform an operation on node")
    monkeypatch.setitem(rmq.__salt__, "rabbitmq.list_users", down)
    ret = rmq.user_present("airflow", PASSWORD, perms=PERMS)
    assert ret["result"] is None and ret["changes"]
    monkeypatch.setattr(rmq, "__opts__", {"test": False})
    assert rmq.user_present("airflow", PASSWORD, perms=PERMS)["result"] is False
