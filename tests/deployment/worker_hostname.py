"""``[core] hostname_callable`` of the test deployment: tells the two Celery workers apart.

Both workers run on one machine, so Airflow's default (the FQDN) would give every task instance
the same ``hostname``. Each worker process gets ``SMSPARTNER_DEPLOY_HOSTNAME`` in its environment;
the task instances it runs report that name, and the test reads it back through the REST API.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """The name set for this process by the test, else the machine's FQDN (Airflow's default)."""
    return os.environ.get("SMSPARTNER_DEPLOY_HOSTNAME") or socket.getfqdn()
