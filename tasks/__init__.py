"""Prefect task wrappers around the stages (retries, tags, caching), installed as `unihope.tasks`.

`work.py` holds the work-folder logic they share. Importing this package changes nothing
process-wide: entry points apply the Prefect defaults (`unihope.prefect_env`).
"""
