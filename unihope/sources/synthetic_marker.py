"""The synthetic dataset's completion marker: is a folder a complete dataset of this config?

Apart from the generator (which imports torch, trimesh and the renderer) so that opening or
re-preparing a complete synthetic dataset, as every rerun of a build does, costs a file read.
"""

from __future__ import annotations

import json
from pathlib import Path

GENERATOR_VERSION = 2  # bump when the written data changes (v2: the layout's tip convention)
COMPLETE_MARKER = ".synthetic_complete.json"


def check_output_dir(out_dir: Path, cfg_hash: str) -> dict | None:
    """The stored summary when `out_dir` already holds this exact dataset; None when it is free.

    Raises:
        ValueError: when the folder holds something else.
    """
    marker = out_dir / COMPLETE_MARKER
    if marker.is_file():
        stored = json.loads(marker.read_text())
        if stored.get("config_hash") == cfg_hash and stored.get("generator_version") == GENERATOR_VERSION:
            return stored["summary"]
        raise ValueError(
            f"{out_dir} holds a synthetic dataset made with another configuration "
            f"(hash {stored.get('config_hash')}, generator v{stored.get('generator_version')}); "
            "choose another folder or delete it"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists and is not an empty folder; choose a new folder for the synthetic dataset")
    return None
