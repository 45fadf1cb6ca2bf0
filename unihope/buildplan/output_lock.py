"""The one owner of an output's build lock: hold it for the whole build, and first sweep what a killed build left.

Every build takes the lock here and nowhere else: the `build-dataset` and `scheduled-build` flows enter
`hold_output` around their tasks, so the CLI, the demo, the benchmarks and the deployment all get the same
lock by running a flow. (The CLI only asks `output_busy` before it starts a server: a query, not a hold.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from unihope.buildplan.workdir import local_output_path, resolve_work_dir
from unihope.config import PipelineConfig
from unihope.storage.io import sweep_temp_files
from unihope.storage.lock import LockHolder, build_lock


@contextlib.contextmanager
def hold_output(config: PipelineConfig, out: str, wait: bool = False) -> Iterator[LockHolder]:
    """Hold `out`'s build lock; once held, delete the temp files a failed or killed build left.

    Sweeping is safe only under the lock (no other build is writing), which is why both live here.

    Args:
        config: the resolved pipeline config (its `flow.work_dir` names the work folder).
        out: dataset path or fsspec URL.
        wait: wait for another build to finish instead of refusing at once.

    Raises:
        OutputBusyError: another build writes `out` (and `wait` is False).
    """
    with build_lock(out, wait=wait) as holder:
        for folder in (local_output_path(out), resolve_work_dir(out, config.flow.work_dir)):
            if folder is not None:
                sweep_temp_files(folder)
        yield holder
