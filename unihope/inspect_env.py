"""What `unihope inspect` prints: installed libraries, the hand model in use, the renderer."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from pathlib import Path

PACKAGES = (
    "torch", "diffusers", "transformers", "smplx", "pyrender", "PyOpenGL", "trimesh",
    "zarr", "numcodecs", "numpy", "opencv-python-headless", "pydantic", "prefect", "prefect-dask",
)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_renderer(render_platform: str) -> str:
    """Open one offscreen context and report the OpenGL vendor/renderer, or why it failed."""
    from unihope.render.gl import import_pyrender

    start_s = time.perf_counter()
    try:
        pyrender = import_pyrender(render_platform)
        renderer = pyrender.OffscreenRenderer(64, 64)
    except (ImportError, RuntimeError, OSError, ValueError) as err:
        return f"renderer: {render_platform} FAILED: {type(err).__name__}: {err}"
    from OpenGL import GL

    vendor = GL.glGetString(GL.GL_VENDOR)
    name = GL.glGetString(GL.GL_RENDERER)
    # Never renderer.delete(): with EGL it terminates the display that every renderer in the process shares.
    elapsed_ms = (time.perf_counter() - start_s) * 1000
    decode = lambda b: b.decode() if isinstance(b, bytes) else str(b)  # noqa: E731
    return f"renderer: pyrender/{render_platform}: {decode(vendor)} / {decode(name)} (context in {elapsed_ms:.0f} ms)"


def describe_environment(mano_dir: Path | None, render_platform: str) -> list[str]:
    """Lines describing this installation."""
    lines = [f"unihope-datagen {_version('unihope-datagen')} on Python {platform.python_version()} ({platform.machine()})"]
    lines += [f"  {name:<24} {_version(name)}" for name in PACKAGES]
    try:
        import torch

        cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "CPU only"
        lines.append(f"torch device: {cuda}")
    except ImportError:
        lines.append("torch device: torch not importable")
    from unihope.hand.assets import describe_hand_model

    for side in ("right", "left"):
        info = describe_hand_model(side, mano_dir=mano_dir, cache_dir=None)
        lines.append(f"hand model ({side}): " + ", ".join(f"{k}={v}" for k, v in info.items()))
    lines.append(describe_renderer(render_platform))
    return lines
