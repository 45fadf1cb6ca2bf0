"""`make install` picks the torch build for the machine: CPU without an NVIDIA driver, CUDA with one, overridable."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _planned_torch_install(tmp_path: Path, *make_args: str, with_driver: bool) -> list[str]:
    """The pip lines `make -n install` would run for torch, with or without an `nvidia-smi` on PATH."""
    bin_dir = tmp_path / ("bin-driver" if with_driver else "bin-none")
    bin_dir.mkdir(parents=True)
    if with_driver:
        fake = bin_dir / "nvidia-smi"
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
    # only the tools make's recipes name, so no real nvidia-smi leaks in from the host
    for tool in ("sh", "bash", "dpkg", "id", "test", "echo"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    env.pop("TORCH_VARIANT", None)
    driver_file = "/proc/driver/nvidia/version" if with_driver else str(tmp_path / "no-driver")
    # -B: plan every recipe even when this checkout's venv is installed already (its stamp is up to date)
    proc = subprocess.run([shutil.which("make"), "-n", "-B", "install", f"NVIDIA_DRIVER_FILE={driver_file}", *make_args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line.strip() for line in proc.stdout.splitlines() if "pip install" in line and "torch" in line]


def test_make_install_picks_cpu_torch_without_a_driver_and_cuda_torch_with_one(tmp_path):
    cpu = _planned_torch_install(tmp_path, with_driver=False)
    assert cpu and all('"torch==2.13.0+cpu"' in line for line in cpu)
    assert any("download.pytorch.org/whl/cpu" in line for line in cpu)  # the fallback index
    cuda = _planned_torch_install(tmp_path, with_driver=True)
    assert cuda == ['.venv/bin/python -m pip install -q "torch===2.13.0" --index-url https://pypi.org/simple']
    # the override wins either way
    assert _planned_torch_install(tmp_path / "o1", "TORCH_VARIANT=cpu", with_driver=True) == cpu
    assert _planned_torch_install(tmp_path / "o2", "TORCH_VARIANT=cuda", with_driver=False) == cuda
