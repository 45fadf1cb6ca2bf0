"""Benchmark: what a task tag costs in Prefect 3.8 when no concurrency limit exists for it.

    python bench/tag_lease.py            # ~1 minute

A flow runs the same task N times in a row (each sleeps `--task-s`), untagged and then tagged
`gpu` (no limit created). The gap between the end of one task body and the start of the next is
orchestration; the tagged run's extra gap is the concurrency-lease request Prefect makes for every
tagged task. Printed: mean and max gap of each, and their ratio. This is why `unihope.flows.build` tags
only de-occlusion tasks of GPU backends (docs/performance/pipeline.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from prefect import flow, task  # noqa: E402


@task
def body(seconds: float) -> tuple[float, float]:
    """Sleep like a task body; return its (start, end) wall times."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@flow
def run_in_a_row(num_tasks: int, task_s: float, tags: list[str]) -> list[float]:
    """Run `body` `num_tasks` times, one after another; return the gaps between bodies in seconds."""
    tagged = body.with_options(tags=set(tags))
    spans = [tagged.submit(task_s).result() for _ in range(num_tasks)]
    return [start - previous_end for (_, previous_end), (start, _) in zip(spans, spans[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--task-s", type=float, default=3.0, help="seconds per task body (> 5 s defeats the cache)")
    args = parser.parse_args()

    run_in_a_row(2, 0.0, [])  # start the API and warm the client, untimed
    untagged = run_in_a_row(args.tasks, args.task_s, [])
    tagged = run_in_a_row(args.tasks, args.task_s, ["gpu"])
    for name, gaps in (("untagged", untagged), ("tagged gpu", tagged)):
        print(f"{name:10s}: gap between tasks mean {1000 * statistics.mean(gaps):6.0f} ms, "
              f"max {1000 * max(gaps):6.0f} ms ({len(gaps)} gaps)")
    print(f"tagged / untagged mean gap: x{statistics.mean(tagged) / statistics.mean(untagged):.1f}")


if __name__ == "__main__":
    main()
