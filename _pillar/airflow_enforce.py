"""
External pillar ``airflow_enforce`` (master side): the minion schedule job of scheduled
enforcement, in pillar ``schedule:`` (conf/master.d/airflow-reactor.conf: ``ext_pillar``).

Why pillar: Salt merges a pillar ``schedule:`` into the minion's running schedule at every
pillar refresh and every minion start (salt/utils/schedule.py ``_get_schedule``,
salt/minion.py ``pillar_schedule_refresh``), so the job cannot be lost for good. The job that
``schedule.present`` kept in the running minion and minion.d/_schedule.conf was seen gone from
three of five lab nodes after a salt-master restart, and enforcement stopped there silently.

Why an ext_pillar: the job follows the site's ``airflow:enforce`` (defaults.yaml merged with
the pillar), and only an ext_pillar sees the pillar compiled from pillar_roots. The job itself
is ``airflow_drift.schedule_job`` (pure); only members of the master's role record get it (a
minion without a role has nothing to enforce).
"""

import logging
import os

import salt.utils.dictupdate
import salt.utils.files
import salt.utils.yaml

log = logging.getLogger(__name__)

__virtualname__ = "airflow_enforce"


def __virtual__():
    return __virtualname__


def _util(name):
    try:
        return __utils__[name]
    except KeyError:
        raise RuntimeError(
            f"{name} not loaded: the master's utils_dirs must include the repo's _utils"
        ) from None


def _defaults():
    """``airflow:enforce`` of the formula's defaults.yaml, found in the master's file_roots."""
    for root in (__opts__.get("file_roots") or {}).get("base") or []:
        path = os.path.join(root, "airflow", "defaults.yaml")
        if os.path.isfile(path):
            with salt.utils.files.fopen(path) as fh:
                data = salt.utils.yaml.safe_load(fh) or {}
            return dict((data.get("airflow") or {}).get("enforce") or {})
    raise RuntimeError("airflow/defaults.yaml is in none of the master's file_roots (base)")


def ext_pillar(minion_id, pillar, *args, **kwargs):  # pylint: disable=unused-argument
    """
    ``{"schedule": {airflow-enforce-highstate: job}}`` for a member of the role record whose
    merged ``airflow:enforce`` has ``enabled: true``, else ``{}`` (then the minion drops the
    job at its next pillar refresh). Bad settings give no job and a logged error; the
    highstate's render names the key (map.jinja's schema check).
    """
    try:
        drift = _util("airflow_drift.api")()
        members = __salt__["airflow_roles.members"]()
        if not any(minion_id in (ids or []) for ids in members.values()):
            return {}
        site = (pillar.get("airflow") or {}).get("enforce") if isinstance(pillar, dict) else None
        enforce = salt.utils.dictupdate.merge(_defaults(), site if isinstance(site, dict) else {},
                                              strategy="recurse", merge_lists=False)
        errs = _util("airflow_schema.errors")(
            {"enforce": enforce}, lambda _id: True, _util("airflow_schema.section")("enforce"))
        if errs:
            log.error("airflow_enforce ext_pillar: no schedule for %s: %s", minion_id,
                      "; ".join(errs))
            return {}
        job = drift.schedule_job(enforce)
        return {"schedule": {drift.JOB: job}} if job else {}
    except Exception:  # pylint: disable=broad-except
        log.exception("airflow_enforce ext_pillar failed for %s: no schedule job", minion_id)
        return {}
