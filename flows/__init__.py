"""Prefect flows, installed as `unihope.flows`: the build DAG (`build.py`), training (`train.py`), the de-occluder training (`train_deoccluder.py`), deployments (`deploy.py`)."""
