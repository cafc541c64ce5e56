"""
A RabbitMQ user whose password never appears on a command line (state module ``airflow_rabbitmq``).

Salt's ``rabbitmq_user.present`` checks the password at every run with
``rabbitmqctl authenticate_user <user> <password>`` and sets it with ``add_user <user> <password>``
/ ``change_password <user> <password>``: the password is in argv, visible to every local user in
``ps`` (and Debian's rabbitmqctl wrapper hands it on to ``su -c``). Here ``authenticate_user``,
``add_user`` and ``change_password`` get the user name only; rabbitmqctl (3.8+, Debian 12 ships
3.10) then reads the password as one line from stdin. Permissions go through Salt's ``rabbitmq``
execution module (no secret involved).

.. code-block:: yaml

    airflow-broker-user:
      airflow_rabbitmq.user_present:
        - name: airflow
        - password: {{ pillar['airflow']['secrets']['broker_password']|json }}
        - perms:
          - airflow:
            - '.*'
            - '.*'
            - '.*'

``test=True`` reports what would change (user created, password changed, permissions set) and
changes nothing (where the broker does not answer yet, it predicts a change). The check of the
password is itself an authentication (stdin again), so it runs under ``test=True`` too.
"""

import logging

import salt.utils.path

log = logging.getLogger(__name__)

__virtualname__ = "airflow_rabbitmq"

#: rabbitmqctl's exit code for a usage error (sysexits EX_USAGE): a rabbitmqctl that does not read
#: the password from stdin rejects the one-argument form with it.
EX_USAGE = 64


def __virtual__():
    if "rabbitmq.list_users" not in __salt__ or not salt.utils.path.which("rabbitmqctl"):
        return (False, "airflow_rabbitmq: rabbitmqctl (the rabbitmq execution module) is not available")
    return __virtualname__


def _ctl(args, password=None):
    """rabbitmqctl with ``args`` (never a secret); the password, if any, on stdin only."""
    kwargs = {"stdin": password + "\n"} if password is not None else {}
    return __salt__["cmd.run_all"](
        ["rabbitmqctl", *args],
        python_shell=False,
        output_loglevel="quiet",
        ignore_retcode=True,
        reset_system_locale=False,
        **kwargs,
    )


def _err(res):
    text = (res.get("stderr") or res.get("stdout") or "").strip()
    return text.splitlines()[-1][:300] if text else f"exit code {res.get('retcode')}"


def _with_password(args, name, password):
    """Run a password-reading command; refuse (never fall back to argv) where stdin is unsupported."""
    res = _ctl([*args, name], password=password)
    if res.get("retcode") == EX_USAGE:
        res = dict(res, stderr=(
            f"rabbitmqctl {args[0]} does not read the password from stdin here (RabbitMQ >= 3.8 "
            f"needed); refusing to put it on the command line: {_err(res)}"))
    return res


def _wanted_perms(perms):
    """``[{vhost: [conf, write, read]}]`` (rabbitmq_user.present's format) -> {vhost: (c, w, r)}."""
    out = {}
    for item in perms or []:
        for vhost, triple in item.items():
            conf, write, read = (list(triple) + [".*", ".*", ".*"])[:3]
            out[vhost] = (conf, write, read)
    return out


def user_present(name, password, perms=None):
    """
    Ensure the RabbitMQ user ``name`` exists with ``password`` and exactly these ``perms``
    on the listed vhosts (other vhosts are left alone), the password on stdin only.

    name
        the user name
    password
        its password (a pillar secret); a single line, no leading/trailing whitespace
        (rabbitmqctl strips it)
    perms
        ``[{vhost: [configure, write, read]}]`` as in ``rabbitmq_user.present``
    """
    ret = {"name": name, "result": True, "comment": "", "changes": {}}
    if not isinstance(password, str) or not password or password != password.strip() or "\n" in password:
        ret.update(result=False, comment="password must be a non-empty single line without surrounding whitespace")
        return ret
    try:
        users = __salt__["rabbitmq.list_users"]()
    except Exception as exc:  # pylint: disable=broad-except
        if __opts__.get("test"):
            # test=True on a node where this run would install/start RabbitMQ first
            ret.update(result=None, changes={"user": {"old": "unknown", "new": name}},
                       comment=f"RabbitMQ user {name} would be checked/created; cannot list users now: {exc}")
        else:
            ret.update(result=False, comment=f"cannot list RabbitMQ users: {exc}")
        return ret
    exists = name in (users or {})
    todo = []
    if not exists:
        todo.append("user")
    else:
        res = _with_password(["authenticate_user"], name, password)
        if res.get("retcode") == EX_USAGE:
            ret.update(result=False, comment=_err(res))
            return ret
        if res.get("retcode"):
            todo.append("password")

    wanted = _wanted_perms(perms)
    current = {}
    if exists and wanted:
        try:
            current = __salt__["rabbitmq.list_user_permissions"](name) or {}
        except Exception as exc:  # pylint: disable=broad-except
            ret.update(result=False, comment=f"cannot list permissions of {name}: {exc}")
            return ret
    perm_changes = {}
    for vhost, triple in sorted(wanted.items()):
        have = current.get(vhost) or {}
        have_triple = (have.get("configure"), have.get("write"), have.get("read"))
        if have_triple != triple:
            perm_changes[vhost] = {"old": list(have_triple) if have else None, "new": list(triple)}

    if not todo and not perm_changes:
        ret["comment"] = f"RabbitMQ user {name} is in the correct state"
        return ret

    changes = {}
    if "user" in todo:
        changes["user"] = {"old": None, "new": name}
    if "password" in todo:
        changes["password"] = "changed"  # never the value
    if perm_changes:
        changes["perms"] = perm_changes

    if __opts__.get("test"):
        ret.update(result=None, changes=changes,
                   comment=f"RabbitMQ user {name} would be updated: {', '.join(sorted(changes))}")
        return ret

    if "user" in todo:
        res = _with_password(["add_user"], name, password)
        if res.get("retcode"):
            ret.update(result=False, comment=f"add_user {name} failed: {_err(res)}")
            return ret
    if "password" in todo:
        res = _with_password(["change_password"], name, password)
        if res.get("retcode"):
            ret.update(result=False, comment=f"change_password {name} failed: {_err(res)}")
            return ret
    for vhost, (conf, write, read) in sorted(wanted.items()):
        if vhost not in perm_changes:
            continue
        res = _ctl(["set_permissions", "-p", vhost, name, conf, write, read])
        if res.get("retcode"):
            ret.update(result=False, changes=changes,
                       comment=f"set_permissions {name} on {vhost} failed: {_err(res)}")
            return ret
    ret.update(changes=changes, comment=f"RabbitMQ user {name} updated: {', '.join(sorted(changes))}")
    return ret
