"""Shared pytest fixtures: small synthetic DexYCB / HO3D datasets, generated once per test session.

`synthetic_dexycb`: 2 sequences x 12 frames x 2 cameras (sequence 0 right hand, sequence 1 left hand),
DexYCB layout, with `truth/` beside it, quirks off (every frame annotated) so that tests of later stages
see every frame. `synthetic_dexycb_quirks`: 2 sequences x 10 frames x 2 cameras with DexYCB's quirks
(unannotated frames, points.xyz, apriltag, pose.npz). `synthetic_ho3d`: 2 sequences x 6 frames, HO3D_v2 layout.
Both yield the dataset root (a Path); tests must not modify them (copy first when corrupting files).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unihope.config import HandModelConfig, SyntheticConfig
from unihope.prefect_env import apply_prefect_env_defaults

apply_prefect_env_defaults()  # what the `unihope` command does before it imports Prefect

def build_subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment of a `unihope` command run as a subprocess: its own Prefect home, and no API URL or fault
    injection inherited, so that the build starts (and owns) its temporary server as a user's would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("PREFECT_API_URL", None)
    env.pop("UNIHOPE_FAIL_ONCE", None)
    env.update(extra)
    return env


SYNTHETIC_DEXYCB_CONFIG = SyntheticConfig(format="dexycb", num_sequences=2, frames_per_sequence=12, num_cameras=2, seed=0)
SYNTHETIC_DEXYCB_QUIRKS_CONFIG = SyntheticConfig(
    format="dexycb", num_sequences=2, frames_per_sequence=10, num_cameras=2, seed=2, quirks=True
)
SYNTHETIC_HO3D_CONFIG = SyntheticConfig(format="ho3d", num_sequences=2, frames_per_sequence=6, seed=1)


@pytest.fixture(scope="session")
def synthetic_dexycb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small synthetic DexYCB dataset (see SYNTHETIC_DEXYCB_CONFIG)."""
    from unihope.sources.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "dexycb"
    write_synthetic_dataset(root, SYNTHETIC_DEXYCB_CONFIG, HandModelConfig())
    return root


@pytest.fixture(scope="session")
def synthetic_dexycb_quirks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small synthetic DexYCB dataset with DexYCB's quirks (see SYNTHETIC_DEXYCB_QUIRKS_CONFIG)."""
    from unihope.sources.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "dexycb_quirks"
    write_synthetic_dataset(root, SYNTHETIC_DEXYCB_QUIRKS_CONFIG, HandModelConfig())
    return root


@pytest.fixture(scope="session")
def synthetic_ho3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small synthetic HO3D_v2 dataset (see SYNTHETIC_HO3D_CONFIG)."""
    from unihope.sources.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "ho3d"
    write_synthetic_dataset(root, SYNTHETIC_HO3D_CONFIG, HandModelConfig())
    return root


CAPSULE_SCENE_SIZE_PX = 96  # the de-occlusion and scoring tests assert this crop size


@pytest.fixture(scope="session")
def capsule_scene_builder():
    """Constructed capsule-hand scenes (hand, box in front, true object-free image); one renderer per session."""
    from capsule_scenes import SceneBuilder

    return SceneBuilder(CAPSULE_SCENE_SIZE_PX)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread: on the shared 2-core machine two threads contend and run ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One Prefect test harness (a real local API server) for a module's flow runs; yields its URL.

    Stopped at the module's end, while the test session's output streams are still open (an ephemeral
    server started on first use would log its stop at exit, into streams pytest has closed)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    previous = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    try:
        with prefect_test_harness(server_startup_timeout=180):
            yield PREFECT_API_URL.value()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = previous
