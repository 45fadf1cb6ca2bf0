"""Import pyrender once, for headless use: the platform must be chosen before PyOpenGL loads."""

from __future__ import annotations

import os
import sys
from types import ModuleType

import numpy as np

_PLATFORMS = ("egl", "osmesa")


def import_pyrender(platform: str = "egl") -> ModuleType:
    """Return the pyrender module set up for offscreen rendering on `platform`.

    PyOpenGL reads PYOPENGL_PLATFORM when it is first imported, so the first call in a process
    decides; a later call asking for another platform raises rather than silently using the first.
    """
    if platform not in _PLATFORMS:
        raise ValueError(f"render platform must be one of {_PLATFORMS}, got {platform!r}")
    current = os.environ.get("PYOPENGL_PLATFORM")
    if "OpenGL" in sys.modules and current and current != platform:
        raise RuntimeError(
            f"PyOpenGL was already loaded for platform {current!r} in this process; "
            f"cannot switch to {platform!r} (use one render.platform per worker process)"
        )
    os.environ["PYOPENGL_PLATFORM"] = platform
    _load_triton_before_gl()
    if not hasattr(np, "infty"):
        np.infty = np.inf  # pyrender 0.1.45 still uses np.infty, removed in numpy 2
    import pyrender

    if platform == "egl":
        _keep_egl_display_alive()
    return pyrender


def _load_triton_before_gl() -> None:
    """Load triton (shipped with torch's CUDA build) before any GL context exists in this process.

    Mesa's llvmpipe (behind EGL and OSMesa) loads its own LLVM. A CUDA build of torch imports triton,
    with LLVM inside, the first time an optimizer steps (Adam asks whether triton is there); loaded
    after Mesa, it crashes the process (SIGSEGV, measured with torch 2.13.0+cu130 / triton 3.7.1 on
    Mesa llvmpipe: render, then one training step). Loaded before Mesa, both work: so a process that
    renders, then trains (`unihope demo`, `unihope build --train`) loads it here. The CPU build has no
    triton and skips this.
    """
    import importlib.util

    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401  (the load order is the point)


def _destroy_context_only(self) -> None:
    """EGLPlatform.delete_context without eglTerminate (see `_keep_egl_display_alive`)."""
    from OpenGL.EGL import eglDestroyContext

    if self._egl_display is not None and self._egl_context is not None:
        eglDestroyContext(self._egl_display, self._egl_context)
        self._egl_context = None
    self._egl_display = None


def _keep_egl_display_alive() -> None:
    """Make pyrender's OffscreenRenderer.delete() free only its own context.

    pyrender 0.1.45 calls eglTerminate on delete; the EGL display is shared by every context of
    the process, so deleting one renderer (a benchmark's, a test's) killed all the others (the
    synthetic source's, the annotation stage's) with GL errors on their next draw.
    """
    from pyrender.platforms import egl

    egl.EGLPlatform.delete_context = _destroy_context_only
