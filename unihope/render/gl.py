"""Import pyrender once, for headless use: the platform must be chosen before PyOpenGL loads."""

from __future__ import annotations

import os
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
    import sys

    if "OpenGL" in sys.modules and current and current != platform:
        raise RuntimeError(
            f"PyOpenGL was already loaded for platform {current!r} in this process; "
            f"cannot switch to {platform!r} (use one render.platform per worker process)"
        )
    os.environ["PYOPENGL_PLATFORM"] = platform
    if not hasattr(np, "infty"):
        np.infty = np.inf  # pyrender 0.1.45 still uses np.infty, removed in numpy 2
    import pyrender

    if platform == "egl":
        _keep_egl_display_alive()
    return pyrender


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
