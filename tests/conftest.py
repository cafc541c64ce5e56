"""Session-wide pytest hooks of every tier.

Salt's log handler at the end of a session
-------------------------------------------
Importing salt (the salt-factories tier, the runner tests) installs Salt's temporary
``DeferredStreamHandler`` on the root logger when logging is not configured yet (here it never
is: pytest.ini disables pytest's logging plugin). It queues every WARNING+ record, among them
the daemons' log lines that salt-factories forwards into this process, and an ``atexit`` hook
flushes the queue to the ``sys.stderr`` of import time: pytest's capture file, closed by then.
Each record then printed ``--- Logging error --- ... ValueError: I/O operation on closed file``
(about a hundred after a green ``make check``).

At the end of the session the handler is taken off the root logger and its queue emptied; a
NullHandler keeps later records from Python's last-resort handler. When the session FAILED, the
queued records go to the real stderr first (they may explain the failure: the daemons' own log
files are removed with the factories' temp dir). Test results are pytest's and untouched.
"""
import logging
import sys


def _salt_temp_handler():
    impl = sys.modules.get("salt._logging.impl")
    if impl is None:
        return None
    try:
        return impl.get_temp_handler()
    except Exception:  # noqa: BLE001 - an other Salt version: leave logging as it is
        return None


def pytest_sessionfinish(session, exitstatus):
    handler = _salt_temp_handler()
    if handler is None:
        return
    logging.root.removeHandler(handler)
    if exitstatus not in (0, 5):  # 5: no tests collected
        real = logging.StreamHandler(sys.__stderr__)
        real.setFormatter(handler.formatter)
        print("\n== Salt log records (WARNING and above) of the failed session:", file=sys.__stderr__)
        handler.sync_with_handlers([real])  # hands the queue over and empties it
    else:
        handler.sync_with_handlers([])  # drop the queue
    handler.setStream(sys.__stderr__)  # its atexit flush now has nothing to write and an open stream
    if not logging.root.handlers:
        logging.root.addHandler(logging.NullHandler())
