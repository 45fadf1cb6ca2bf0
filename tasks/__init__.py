"""Prefect task wrappers around the stages (retries, tags, caching); `work.py` holds the work-folder logic.

Importing this package (or `flows`) sets process-wide defaults for Prefect before Prefect is
imported; values already in the environment win: no telemetry, and a startup timeout long enough
for the ephemeral API on a fresh PREFECT_HOME on a busy 2-core machine (15-20 s measured there).
"""

import os

PREFECT_ENV_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}
for _name, _value in PREFECT_ENV_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
