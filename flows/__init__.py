"""Prefect flows, installed as `unihope.flows`: the build DAG (`build.py`), training (`train.py`), deployments (`deploy.py`)."""
