"""Synthetic hand-object sequences written in DexYCB's (or HO3D_v2's) exact on-disk layout, plus truth.

Each sequence: a table with two or three YCB stand-ins; a MANO hand (right or left) approaches the
grasped object with open fingers (approach), closes its fingers around it (close), then lifts and
turns it; the object moves rigidly with the hand (lift). The grasp is planned on the object's grip
proxy: the palm is placed against the object and every finger curls until it touches the surface,
so the fingers wrap around the object and the object hides parts of the hand in many views.

Beside the dataset, `truth/` holds what only the generator knows (never read by a stage):
`grasp.json` (sample key -> grasping, from the motion phases), `phases.json`, `visibility.json`
(visible / full hand pixels per view) and an object-free rendering of every view (the true
de-occluded image: same camera, lights and background, the grasped object removed).

With `SyntheticConfig.quirks` (DexYCB layout) the dataset also has what real DexYCB has beyond the
files the pipeline reads: frames whose hand is not annotated (`pose_m` all 0, `joint_3d` / `joint_2d`
all -1, no hand in `seg`; at the start of every sequence and scattered, the same frames in every
camera as the annotation is per sequence), `models/<name>/points.xyz`, an `apriltag` entry in
`extrinsics.yml`, and a per-sequence `pose.npz` (world frame, as dex-ycb-toolkit's SequenceLoader
reads it). `truth/unannotated.json` lists the unannotated sample keys.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from unihope.config import DeocclusionConfig, HandModelConfig, SyntheticConfig
from unihope.sources.synthetic.common import TRUTH_DIR
from unihope.sources.synthetic.dexycb_layout import write_dexycb_layout
from unihope.sources.synthetic.ho3d_layout import write_ho3d_layout
from unihope.sources.synthetic.scene import SequenceWriter
from unihope.sources.synthetic_render import SceneRenderers
from unihope.sources.synthetic_marker import COMPLETE_MARKER, GENERATOR_VERSION, check_output_dir

OCCLUDED_MAX_VISIBILITY = DeocclusionConfig().max_visibility  # the summary's "occluded": de-occlusion's own test


@dataclass(frozen=True, slots=True)
class SynthSummary:
    """What `write_synthetic_dataset` wrote."""

    out_dir: str
    format: str
    num_sequences: int
    num_frames: int  # frames over all sequences (per camera)
    num_images: int  # frames x cameras
    num_left_sequences: int
    num_grasping_images: int
    num_occluded_images: int  # visibility <= OCCLUDED_MAX_VISIBILITY
    visibility_min: float
    visibility_median: float
    visibility_max: float
    seconds: float
    sequence_keys: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """Printable multi-line summary."""
        return "\n".join(
            [
                f"synthetic {self.format} dataset at {self.out_dir}",
                f"  sequences: {self.num_sequences} ({self.num_left_sequences} left-handed), frames: {self.num_frames}, "
                f"images: {self.num_images}",
                f"  grasping images (truth): {self.num_grasping_images}",
                f"  hand visibility: min {self.visibility_min:.2f}, median {self.visibility_median:.2f}, "
                f"max {self.visibility_max:.2f}; occluded (<= {OCCLUDED_MAX_VISIBILITY:g}): {self.num_occluded_images}",
                f"  written in {self.seconds:.1f} s",
            ]
        )


def write_synthetic_dataset(out_dir: Path, cfg: SyntheticConfig, hand_cfg: HandModelConfig,
                            renderers: SceneRenderers | None = None,
                            on_progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """Write a synthetic dataset in DexYCB's (or HO3D_v2's) layout plus `truth/`; idempotent.

    The data is written into `<out_dir>.incomplete` and renamed into place when complete; a marker
    file holding the config hash is written last. Calling again with the same config returns the
    stored summary without rendering anything.

    Args:
        out_dir: destination folder (absent or empty, or a complete dataset of the same config).
        cfg: what to generate (format, sequences, frames, cameras, seed, image size).
        hand_cfg: which MANO files to use (None fields -> the procedural hand).
        renderers: the caller's renderers, reused across datasets (a build worker's); None -> one for this call.
        on_progress: called with (images rendered, images in all) as the images are rendered (the build's bar).

    Returns:
        A SynthSummary (printable with `.describe()`).

    Raises:
        ValueError: when `out_dir` holds other files or a dataset of another configuration.
    """
    # 1. Check inputs: already complete? free folder?
    start_s = time.perf_counter()
    out_dir = Path(out_dir)
    cfg_hash = cfg.config_hash()
    stored = check_output_dir(out_dir, cfg_hash)
    if stored is not None:
        return SynthSummary(**{**stored, "sequence_keys": tuple(stored["sequence_keys"])})
    work_dir = out_dir.with_name(out_dir.name + ".incomplete")
    if work_dir.exists():
        shutil.rmtree(work_dir)  # a previous run died half-way: our own scratch folder
    work_dir.mkdir(parents=True)

    # 2. Models, renderer, hand layers
    renderer = (renderers if renderers is not None else SceneRenderers()).get(cfg.image_width_px, cfg.image_height_px)
    num_images = cfg.num_sequences * cfg.frames_per_sequence * (cfg.num_cameras if cfg.format == "dexycb" else 1)
    rendered = itertools.count(1)
    on_image = (lambda: on_progress(next(rendered), num_images)) if on_progress else None
    writer = SequenceWriter(work_dir, cfg, hand_cfg, renderer, on_image=on_image)
    writer.write_models()

    # 3. Sequences
    sequence_keys = write_dexycb_layout(writer, cfg) if cfg.format == "dexycb" else write_ho3d_layout(writer, cfg)

    # 4. Truth files
    truth_dir = work_dir / TRUTH_DIR
    truth_dir.mkdir(parents=True, exist_ok=True)
    (truth_dir / "grasp.json").write_text(json.dumps(writer.truth_grasp, indent=0, sort_keys=True))
    (truth_dir / "phases.json").write_text(json.dumps(writer.truth_phase, indent=0, sort_keys=True))
    (truth_dir / "visibility.json").write_text(json.dumps(writer.truth_visibility, indent=0, sort_keys=True))

    # 5. Summary, marker (last), rename into place
    visibility = np.array([v for v in writer.truth_visibility.values() if np.isfinite(v)] or [np.nan])
    summary = SynthSummary(
        out_dir=str(out_dir),
        format=cfg.format,
        num_sequences=cfg.num_sequences,
        num_frames=cfg.num_sequences * cfg.frames_per_sequence,
        num_images=num_images,
        num_left_sequences=sum(1 for i in range(cfg.num_sequences) if cfg.format == "dexycb" and i % 2 == 1),
        num_grasping_images=int(sum(writer.truth_grasp.values())),
        num_occluded_images=int((visibility <= OCCLUDED_MAX_VISIBILITY).sum()),
        visibility_min=float(np.nanmin(visibility)),
        visibility_median=float(np.nanmedian(visibility)),
        visibility_max=float(np.nanmax(visibility)),
        seconds=time.perf_counter() - start_s,
        sequence_keys=tuple(sequence_keys),
    )
    marker = {"config_hash": cfg_hash, "generator_version": GENERATOR_VERSION, "config": cfg.model_dump(mode="json"),
              "summary": {**asdict(summary), "sequence_keys": list(summary.sequence_keys)}}  # fmt: skip
    (work_dir / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1))
    if out_dir.exists():
        out_dir.rmdir()  # checked empty above
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir.rename(out_dir)
    return summary
