"""Prefect task wrappers around the stages (retries, tags, fault injection), installed as `unihope.tasks`.

Each task is a stage call plus options through one skeleton (`common.run_stage_item`); what a stage
item reads, computes and writes is plain Python in `unihope.buildplan`. Importing this package changes
nothing process-wide: entry points apply the Prefect defaults (`unihope.prefect_env`).
"""
