"""Torch's CPU worker threads sleep between operations in the server process.

Torch on the CPU runs each operation on an OpenMP thread team. By default GNU OpenMP
keeps the team's idle workers spinning for a while after each operation, waiting for
the next. A server answering a class does many small operations interleaved with
Python work on other threads (the web event loop, each request's processor), so the
spinning workers take the cores that work needs. Measured on the 2-core machine with a
class of 100 asking the classroom model (docs/reliability.md): the server process used
8-16 CPU-seconds per wave of 200 requests, 2.5-2.8 of them in the spinning worker;
with the workers sleeping ("PASSIVE"), 5-8.

The policy is read when torch loads OpenMP, so it must be set before torch is imported.
A value the user set (OMP_WAIT_POLICY in the environment) is kept.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"


def prefer_sleeping_cpu_workers(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user chose a policy. True if it was set.

    Child processes (a fine-tune runner) inherit it. Call before torch is imported: once
    torch has loaded OpenMP the setting has no effect in this process (only its children
    get it; logged at debug level).
    """
    environ = os.environ if environ is None else environ
    if environ.get(WAIT_POLICY_VARIABLE):
        return False
    environ[WAIT_POLICY_VARIABLE] = "PASSIVE"
    if "torch" in sys.modules:
        logger.debug("torch was imported before the OpenMP wait policy was set: it applies to child processes only")
    return True
