"""Prefect task wrappers around the stages (retries, tags, fault injection), installed as `unihope.tasks`.

Each task body reads straight through: reuse check -> `begin_item` -> load -> stage function -> save ->
`finish_item` (`common`); the load and save helpers are plain Python in `unihope.buildplan`. Importing this package changes
nothing process-wide: entry points apply the Prefect defaults (`unihope.prefect_env`).
"""
