"""Process-wide Prefect defaults, applied by the entry points (CLI, tests), never on import.

Prefect reads these when it is first imported, so an entry point calls `apply_prefect_env_defaults()`
before it imports a flow or task module. Values already in the environment win. A library user who
imports `unihope.flows` directly gets Prefect's own defaults unless they call it (docs/OPERATIONS.md).
"""

from __future__ import annotations

import os

PREFECT_ENV_DEFAULTS = {
    "DO_NOT_TRACK": "1",  # no client telemetry
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no server telemetry
    # The ephemeral API on a fresh PREFECT_HOME needs 15-20 s on a busy 2-core machine (docs/PERFORMANCE.md).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # Stage code logs with `logging` (it never imports Prefect); naming its logger makes Prefect forward
    # the records to the task run's logs (the UI), here and in the worker processes it starts.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "unihope",
}


def apply_prefect_env_defaults(environ: dict[str, str] | None = None) -> None:
    """Set each default that the environment does not set already (os.environ unless given)."""
    target = os.environ if environ is None else environ
    for name, value in PREFECT_ENV_DEFAULTS.items():
        target.setdefault(name, value)
