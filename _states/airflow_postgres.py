"""
A PostgreSQL login role whose password never appears on a command line (state module
``airflow_postgres``).

Salt's ``postgres_user.present`` sends ``CREATE ROLE ... PASSWORD 'SCRAM-SHA-256$...'`` (or
``ALTER ROLE``) as ``psql -c <sql>``: the verifier is in argv, visible in ``ps`` to every local
user, who can then brute-force the password offline. Here every statement goes to ``psql`` on
stdin, run as the ``postgres`` superuser over the local socket (peer authentication): no secret in
argv, no password for the superuser.

Idempotency: the stored verifier (``pg_authid.rolpassword``, read on stdout) is compared with the
pillar password in Python: the SCRAM-SHA-256 verifier is recomputed with the stored salt and
iteration count (what PostgreSQL itself does at login). This needs no login over the network
(pg_hba.conf need not allow the host running Salt) and is exact; only on a mismatch (or an
md5/plain/absent password) a new verifier with a fresh salt is generated here and sent, so the
plaintext reaches neither argv nor the server's statement log.

.. code-block:: yaml

    airflow-db-role:
      airflow_postgres.role_present:
        - name: airflow
        - password: {{ pillar['airflow']['secrets']['db_password']|json }}
        - port: 5432

``test=True`` reports what would change (role created, password set, LOGIN granted) and changes
nothing (it reads ``pg_authid`` only); where the server does not answer yet (the same run would
install or start it) it predicts a change instead of failing.
"""

import base64
import hashlib
import hmac
import logging
import os
import re

import salt.utils.path

try:
    from salt.ext.saslprep import saslprep
except ImportError:  # pragma: no cover - every supported Salt ships it
    saslprep = None

log = logging.getLogger(__name__)

__virtualname__ = "airflow_postgres"

SCRAM_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$")
ITERATIONS = 4096  # PostgreSQL's default scram_iterations


def __virtual__():
    if not salt.utils.path.which("psql"):
        return (False, "airflow_postgres: psql is not installed")
    return __virtualname__


def scram_verifier(password, salt_bytes=None, iterations=ITERATIONS):
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677)."""
    if salt_bytes is None:
        salt_bytes = os.urandom(16)
    prepared = saslprep(password) if saslprep else password
    salted = hashlib.pbkdf2_hmac("sha256", prepared.encode("utf-8"), salt_bytes, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt_bytes)}${b64(stored_key)}:{b64(server_key)}"


def verifier_matches(password, stored):
    """True when the stored SCRAM verifier is the one of ``password`` (any other form: False)."""
    match = SCRAM_RE.match(stored or "")
    if not match:
        return False
    try:
        salt_bytes = base64.b64decode(match.group(2), validate=True)
    except ValueError:
        return False
    expected = scram_verifier(password, salt_bytes=salt_bytes, iterations=int(match.group(1)))
    return hmac.compare_digest(expected, stored)


def _ident(name):
    return '"' + name.replace('"', '""') + '"'


def _literal(value):
    return "'" + value.replace("'", "''") + "'"


def _psql(sql, port):
    """``psql`` as postgres over the local socket; the SQL (and any secret in it) on stdin."""
    return __salt__["cmd.run_all"](
        ["runuser", "-u", "postgres", "--", "psql", "--no-psqlrc", "--no-password",
         "--no-align", "--tuples-only", "--quiet", "-v", "ON_ERROR_STOP=1",
         "--port", str(port), "--dbname", "postgres", "--file", "-"],
        stdin=sql,
        cwd="/",
        python_shell=False,
        output_loglevel="quiet",
        ignore_retcode=True,
    )


def _err(res):
    text = (res.get("stderr") or "").strip()
    return text.splitlines()[-1][:300] if text else f"exit code {res.get('retcode')}"


def role_present(name, password, port=5432, login=True):
    """
    Ensure the PostgreSQL role ``name`` exists, can log in (``login``) and has ``password``
    (stored as SCRAM-SHA-256), with every statement on psql's stdin.

    name
        the role
    password
        its password (a pillar secret)
    port
        the local cluster's port (its socket: /var/run/postgresql/.s.PGSQL.<port>)
    login
        LOGIN (True) or NOLOGIN (False)
    """
    ret = {"name": name, "result": True, "comment": "", "changes": {}}
    if not isinstance(password, str) or not password:
        ret.update(result=False, comment="password must be a non-empty string")
        return ret
    res = _psql(
        "SELECT rolcanlogin, coalesce(rolpassword, '') FROM pg_authid "
        f"WHERE rolname = {_literal(name)};\n", port)
    if res.get("retcode"):
        if __opts__.get("test"):
            # test=True on a node where this run would install/start PostgreSQL first
            ret.update(result=None, changes={"role": {"old": "unknown", "new": name}},
                       comment=f"PostgreSQL role {name} would be checked/created; cannot read it now: {_err(res)}")
        else:
            ret.update(result=False, comment=f"cannot read role {name}: {_err(res)}")
        return ret
    row = (res.get("stdout") or "").strip()
    exists = bool(row)
    can_login, stored = (row.split("|", 1) + [""])[:2] if exists else ("", "")
    changes = {}
    if not exists:
        changes["role"] = {"old": None, "new": name}
    else:
        if (can_login == "t") != bool(login):
            changes["login"] = {"old": can_login == "t", "new": bool(login)}
        if not verifier_matches(password, stored):
            changes["password"] = "changed"  # never the value
    if not changes:
        ret["comment"] = f"PostgreSQL role {name} is in the correct state"
        return ret
    if __opts__.get("test"):
        ret.update(result=None, changes=changes,
                   comment=f"PostgreSQL role {name} would be updated: {', '.join(sorted(changes))}")
        return ret
    verb = "CREATE" if not exists else "ALTER"
    flags = "LOGIN" if login else "NOLOGIN"
    sql = f"{verb} ROLE {_ident(name)} WITH {flags}"
    if not exists or "password" in changes:
        sql += f" PASSWORD {_literal(scram_verifier(password))}"
    res = _psql(sql + ";\n", port)
    if res.get("retcode"):
        ret.update(result=False, comment=f"{verb} ROLE {name} failed: {_err(res)}")
        return ret
    ret.update(changes=changes, comment=f"PostgreSQL role {name} updated: {', '.join(sorted(changes))}")
    return ret
