"""
The master-owned role record, for the master's pillar (execution module ``airflow_roles``).

pillar/top.sls gives a role's secrets only to the minions this record lists for the role, and
pillar/airflow/members.sls hands every minion the membership (``airflow_members``) its states
render haproxy backends and database/broker/lb hosts from. The pillar is compiled on the
master, whose loader has the modules of its ``module_dirs`` (conf/master.d/airflow-reactor.conf),
so ``salt['airflow_roles.members']()`` works there; the record itself is written by
``salt-run airflow.grant`` / ``airflow.revoke`` (``airflow_healing:roles_file``).

The parsing and its rules are the runner's (``airflow_decide.parse_role_record``), so the
pillar and the runner can never disagree on who has which role.

Loads only on the master (``__role``); minions get the file by saltutil.sync_all (salt/_modules)
and skip it.
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "airflow_roles"


def __virtual__():
    if __opts__.get("__role") != "master":
        return (False, "airflow_roles: the salt-master's role record, not for minions")
    return __virtualname__


def _util(name):
    """A function of a utility module (``_utils/``), or a clear error when it is not loaded."""
    try:
        return __utils__[name]
    except KeyError:
        raise RuntimeError(
            f"{name} not loaded: the master's utils_dirs must include the repo's _utils"
        ) from None


def _record():
    core = _util("airflow_decide.api")()
    table = _util("airflow_daemons.api")()
    conf = core.settings(__opts__)
    store = _util("airflow_store.store")(conf, _util("airflow_ops.system_clock")())
    data, error = store.read_role_record()
    record, errors = core.parse_role_record(data, table)
    for message in ([error] if error else []) + errors:
        log.error("airflow role record: %s", message)
    return core, table, record


def members():
    """
    {role: [minion ids]} of the role record, every role of the daemon table listed (an empty
    list when no minion has it).

    CLI Example:

    .. code-block:: bash

        salt-run salt.cmd airflow_roles.members
    """
    core, table, record = _record()
    return core.role_members(record, table)


def granted(minion):
    """
    The roles the record grants ``minion`` (an empty list for an unknown one).

    CLI Example:

    .. code-block:: bash

        salt-run salt.cmd airflow_roles.granted worker1
    """
    _, _, record = _record()
    return list(record.get(minion, []))
