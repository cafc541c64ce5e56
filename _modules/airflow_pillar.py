"""
Checks of the merged ``airflow`` settings where the states render (execution module
``airflow_pillar``).

The schema and the checks are pure, in ``_utils/airflow_schema.py`` (``__utils__``); the
minion-id rule and the roles that run daemons come from the daemon table
``_utils/airflow_daemons.py``. This module adds what only the node knows (its own addresses
and roles) and what map.jinja / hosts.jinja hand it:

* ``check(airflow)``: map.jinja, right after merging defaults.yaml with pillar ``airflow:``:
  every key of the schema, plus ``network:cidr`` against this node's addresses (grains ipv4 +
  ipv6) on a node with an Airflow role (``salt/top.sls`` gives the clean states to every
  minion: one outside the cluster network must still render them);
* ``check_scheduler(active, masters)``: hosts.jinja, against the airflow-master minions of
  its one mine lookup.

Each returns ``''`` or ONE message with every error, which the template raises. Keys the
schema does not know are accepted and logged once per minion process (a warning).
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "airflow_pillar"

_WARNED = set()  # unknown key paths already logged by this process (map.jinja renders often)


def __virtual__():
    return __virtualname__


def _utils(name):
    """A function of the utils modules (synced by saltutil.sync_all with this module)."""
    try:
        return __utils__[name]
    except KeyError:
        from salt.exceptions import CommandExecutionError  # pylint: disable=import-outside-toplevel

        raise CommandExecutionError(
            f"utility {name} is not on this minion (salt/_utils): run saltutil.sync_all"
        ) from None


def _addresses():
    return list(__grains__.get("ipv4") or []) + list(__grains__.get("ipv6") or [])


def _has_airflow_role():
    roles = __grains__.get("roles") or []
    if isinstance(roles, str):
        roles = [roles]
    return bool(set(roles) & set(_utils("airflow_daemons.roles")()))


def errors(airflow, addresses=None):
    """
    Every error of the merged settings ``airflow`` (a list of messages, ``[]`` when good):
    the schema, then ``network:cidr`` against ``addresses`` (default: this node's grains ipv4
    + ipv6, checked only on a node with an Airflow role).

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_pillar.errors '{"worker": {"concurrency": "many"}}'
    """
    out = list(_utils("airflow_schema.errors")(airflow, _utils("airflow_daemons.valid_minion_id")))
    for path in _utils("airflow_schema.unknown")(airflow):
        if path not in _WARNED:
            _WARNED.add(path)
            log.warning("airflow_pillar: %s is not a key of the airflow formula (accepted)", path)
    if isinstance(airflow, dict) and isinstance(airflow.get("network"), dict):
        if addresses is None:
            addresses = _addresses() if _has_airflow_role() else None
        if addresses is not None:
            out.extend(_utils("airflow_schema.network_errors")(airflow["network"].get("cidr"), addresses))
    return out


def check(airflow, addresses=None):
    """
    ``errors`` as one render-error message, ``''`` when there are none (map.jinja raises it).

    CLI Example:

    .. code-block:: bash

        salt worker1 airflow_pillar.check '{"worker": {"concurrency": "many"}}'
    """
    return _utils("airflow_schema.message")(errors(airflow, addresses))


def scheduler_errors(active, masters):
    """
    Errors of ``airflow:scheduler:active`` (empty: no error) against ``masters``, the
    airflow-master minion ids the mine knows (hosts.jinja).

    CLI Example:

    .. code-block:: bash

        salt master1 airflow_pillar.scheduler_errors master3 '[master1, master2]'
    """
    return _utils("airflow_schema.scheduler_errors")(
        active, masters, _utils("airflow_daemons.valid_minion_id"))


def check_scheduler(active, masters):
    """
    ``scheduler_errors`` as one render-error message, ``''`` when there are none.

    CLI Example:

    .. code-block:: bash

        salt master1 airflow_pillar.check_scheduler master3 '[master1, master2]'
    """
    return _utils("airflow_schema.message")(scheduler_errors(active, masters))
