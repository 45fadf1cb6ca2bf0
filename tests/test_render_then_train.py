"""Rendering, then training, in one process (what `unihope demo` and `unihope build --train` do) under torch's CUDA build.

torch's CUDA wheel brings triton, whose LLVM crashed the process (SIGSEGV) when it loaded after Mesa's
llvmpipe had a GL context: the demo's first optimizer step. `unihope.render.gl.import_pyrender` loads
triton first. The CUDA wheel installs and imports on a CPU-only machine too: point
UNIHOPE_CUDA_TORCH_SITE at a site-packages folder holding it (`pip install --target DIR torch===2.13.0
--index-url https://pypi.org/simple`, ~3.5 GB) and the second test runs the sequence under it as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA_TORCH_SITE_ENV = "UNIHOPE_CUDA_TORCH_SITE"

# A fake triton that records whether a GL library was loaded before it.
_FAKE_TRITON = "import sys\nLOADED_AFTER_GL = 'OpenGL' in sys.modules\n__version__ = '0.0-fake'\n"

# The demo's sequence, small: render and pack a dataset (EGL), then train on it in the same process.
_RENDER_THEN_TRAIN = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.training_fixtures import build_small_dataset
from unihope.config import HandModelConfig
from unihope.train.run import run_training_from_cli
import torch
work = Path(sys.argv[1])
build_small_dataset(work, str(work / "data"), HandModelConfig(cache_dir=work / "cache"), num_sequences=2)
result = run_training_from_cli(Path(sys.argv[2]) / "configs" / "train_demo.yaml", str(work / "data"), work / "run",
                               overrides=("optim.epochs=1", "eval_every_epochs=1"), log=lambda line: None)
print("TRAINED", torch.__version__, "triton" in sys.modules, result.checkpoint_path.is_file(), flush=True)
"""


def test_import_pyrender_loads_triton_before_any_gl_library(tmp_path):
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text(_FAKE_TRITON)
    code = ("import sys\nfrom unihope.render.gl import import_pyrender\nimport_pyrender('egl')\n"
            "import triton\nprint('ORDER', 'OpenGL' in sys.modules, triton.LOADED_AFTER_GL)")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ORDER True False" in proc.stdout  # GL loaded by the end, triton loaded before it


def _run_render_then_train(tmp_path: Path, site: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYOPENGL_PLATFORM": "egl"}
    env["PYTHONPATH"] = os.pathsep.join(([site] if site else []) + [str(REPO)])
    return subprocess.run([sys.executable, "-c", _RENDER_THEN_TRAIN, str(tmp_path), str(REPO)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_render_then_train_in_one_process_with_the_installed_torch_and_the_cuda_wheel(tmp_path):
    """The installed torch always; the CUDA wheel too when UNIHOPE_CUDA_TORCH_SITE names one (it crashed before)."""
    import torch

    runs = [("installed", None)]
    cuda_site = os.environ.get(CUDA_TORCH_SITE_ENV)
    if cuda_site:
        runs.append(("cuda wheel", cuda_site))
    for label, site in runs:
        proc = _run_render_then_train(tmp_path / label.replace(" ", "-"), site)
        assert proc.returncode == 0, f"{label}: exit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
        line = next(line for line in proc.stdout.splitlines() if line.startswith("TRAINED"))
        _, version, has_triton, has_checkpoint = line.split()
        assert has_checkpoint == "True"
        if site is not None:  # the CUDA build, with triton loaded in the process that rendered
            assert "+cu" in version and has_triton == "True", line
        else:
            assert version == torch.__version__
