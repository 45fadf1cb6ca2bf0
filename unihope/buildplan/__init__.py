"""What a build computes and where, in plain Python (no Prefect): config resolution, stage hashes,
the work folder, plans of parts / batches / shards, work files, and one function per stage item.

`unihope.tasks` wraps the stage items as Prefect tasks; `unihope.flows` wires the tasks.
"""
