"""Prefect flows: the build DAG (`build.py`), training (`train.py`), deployments (`deploy.py`).

Importing `tasks` first sets the Prefect environment defaults (telemetry off, startup timeout)
before Prefect itself is imported.
"""

import tasks  # noqa: F401  (sets PREFECT_ENV_DEFAULTS)
