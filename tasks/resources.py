"""The per-worker resources object: render thread, annotation renderers, de-occluders and GPU slots, in one owner.

A worker process runs many tasks; what they reuse (a GL context, loaded hand layers, model weights,
which GPU is busy) lives in one `WorkerResources`, which the tasks pass into the stages
(`annotate_frames(..., resources=...)`, the de-occluder they run). `worker_resources()` is the
process's one instance; nothing else in the pipeline keeps process-wide state.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from unihope.config import DeocclusionConfig
from unihope.tasks.device_pool import DevicePool, devices_for, visible_cuda_devices
from unihope.tasks.timeouts import StageTimeout, call_with_timeout

R = TypeVar("R")


def _new_render_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="unihope-render")


class WorkerResources:
    """What one worker process reuses across tasks.

    - the render thread: an EGL/OpenGL context works only on the thread that created it, and task
      runners call tasks from varying threads (ThreadPoolTaskRunner, Dask workers), so everything that
      renders runs on this one thread;
    - the annotation resources (renderers, hand layers, object meshes: `AnnotationResources`);
    - the synthetic source's scene renderers (`SceneRenderers`), when a build generates its data;
    - one de-occluder per config (building one loads model weights: seconds to minutes for ControlNet);
    - the device pool over the process's visible CUDA devices (one batch per GPU at a time).
    """

    def __init__(self, visible_devices: Sequence[str] | None = None) -> None:
        """Args:
            visible_devices: the CUDA devices to pool; None = the ones this process sees (looked up on first use).
        """
        from unihope.render.annotate import AnnotationResources
        from unihope.sources.synthetic_render import SceneRenderers

        self.annotation = AnnotationResources()
        self.scene_renderers = SceneRenderers()  # the synthetic source's, when the build generates it
        self._render_thread = _new_render_thread()
        self._render_lock = threading.Lock()
        self._deoccluders: dict[str, object] = {}
        self._deoccluders_lock = threading.Lock()
        self._visible_devices = None if visible_devices is None else tuple(visible_devices)
        self._pool: DevicePool | None = None
        self._pool_lock = threading.Lock()

    # ---- the render thread --------------------------------------------------------------------

    def on_render_thread(self, fn: Callable[..., R], *args: Any) -> R:
        """Call `fn(*args)` on the render thread and return its result (exceptions propagate).

        It runs in the caller's context: a task's log lines from the render thread reach its run (without
        Prefect's context variables each would try to start an API server of its own).
        """
        return self._render_thread.submit(contextvars.copy_context().run, fn, *args).result()

    def on_render_thread_within(self, timeout_s: float, what: str, fn: Callable[..., R], *args: Any,
                                hang_s: float = 0.0) -> R:
        """`on_render_thread` that gives up after `timeout_s` (a stuck EGL/driver call) with `StageTimeout`.

        On a timeout the stuck render thread is abandoned: a new one takes its place and the
        renderers are forgotten (their GL contexts belong to the stuck thread), so the retry renders
        on fresh state.

        Args:
            timeout_s: seconds to wait.
            what: names the work in the error.
            fn, args: the call.
            hang_s: fault injection (`unihope.tasks.timeouts.call_with_timeout`).

        Raises:
            StageTimeout: on expiry.
        """
        executor = self._render_thread
        try:
            return call_with_timeout(fn, *args, timeout_s=timeout_s, what=what, hang_s=hang_s, executor=executor)
        except StageTimeout:
            with self._render_lock:
                if self._render_thread is executor:  # another task may have replaced it already
                    self._render_thread = _new_render_thread()
                    executor.shutdown(wait=False, cancel_futures=True)
                    self.annotation.forget_renderers()
                    self.scene_renderers = type(self.scene_renderers)()  # its contexts belong to the stuck thread
            raise

    # ---- de-occluders -------------------------------------------------------------------------

    def deoccluder(self, cfg: DeocclusionConfig):
        """The de-occluder for `cfg` (its device already pinned), built on first use."""
        from unihope.deocclude import build_deoccluder

        key = cfg.config_hash()
        with self._deoccluders_lock:
            if key not in self._deoccluders:
                self._deoccluders[key] = build_deoccluder(cfg)
            return self._deoccluders[key]

    def forget_deoccluder(self, cfg: DeocclusionConfig) -> None:
        """Drop the de-occluder of `cfg` (its last call got stuck): the retry builds a fresh one."""
        with self._deoccluders_lock:
            self._deoccluders.pop(cfg.config_hash(), None)

    # ---- GPU slots ----------------------------------------------------------------------------

    def device_pool(self) -> DevicePool | None:
        """The pool over this process's visible CUDA devices (shared by every task), or None without CUDA."""
        with self._pool_lock:
            if self._pool is None:
                visible = self._visible_devices if self._visible_devices is not None else visible_cuda_devices()
                if not visible:
                    return None
                self._pool = DevicePool(visible)
            return self._pool

    @contextmanager
    def device_slot(self, requested: str) -> Iterator[str | None]:
        """Hold one device slot for a GPU batch configured with `requested`; yields the device, or None on the CPU.

        Raises:
            ValueError: for `cuda:N` beyond the visible devices.
        """
        pool = self.device_pool()
        candidates = devices_for(requested, pool.devices if pool is not None else ())
        if pool is None or not candidates:
            yield None
            return
        with pool.acquire(candidates) as device:
            yield device


_WORKER: WorkerResources | None = None
_WORKER_LOCK = threading.Lock()


def worker_resources() -> WorkerResources:
    """This process's `WorkerResources` (created on first use; every task of the process shares it)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = WorkerResources()
        return _WORKER
