"""Small stored datasets for training tests: a direct (Prefect-free) build, and a stand-in MANO model.

`write_stand_in_mano`: a MANO-format model that differs from the procedural default (another skeleton),
standing in for the official MANO files. `build_small_dataset`: synthetic DexYCB- (or HO3D-) layout frames rendered,
annotated, de-occluded (render backend) and packed with the real stage functions into one URL.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from unihope.config import HandModelConfig, PipelineConfig, SyntheticConfig

# Anisotropic scale about the wrist: bones get longer, the palm flatter (a skeleton far from the default).
STAND_IN_SCALE = np.array([1.15, 1.25, 0.9])
SMALL_FRAMES_PER_SEQUENCE = 4


def write_stand_in_mano(mano_dir: Path) -> Path:
    """Write MANO_RIGHT.pkl / MANO_LEFT.pkl in MANO's pickle format: the procedural hand with a rescaled template."""
    from unihope.hand import build_procedural_mano
    from unihope.hand.procedural import left_hand_from_right
    from unihope.hand.convert import write_mano_pickle

    right = build_procedural_mano("right")
    wrist_m = np.asarray(right["J_regressor"] @ right["v_template"])[0]
    right["v_template"] = wrist_m + (right["v_template"] - wrist_m) * STAND_IN_SCALE
    mano_dir.mkdir(parents=True, exist_ok=True)
    write_mano_pickle(right, mano_dir / "MANO_RIGHT.pkl")
    write_mano_pickle(left_hand_from_right(right), mano_dir / "MANO_LEFT.pkl")
    return mano_dir


def build_small_dataset(work: Path, url: str, hand_cfg: HandModelConfig, num_sequences: int,
                        layout: str = "dexycb") -> PipelineConfig:
    """Render `num_sequences` x 4 frames (one camera) with `hand_cfg`'s hand and pack them into `url` (finalized).

    `layout` is the synthetic source's on-disk layout ("dexycb" or "ho3d"), read by that layout's reader.
    The synthetic frames live in `work/src-<n>` (`work/src-<layout>-<n>` for HO3D); a second call with more sequences rewrites `url`
    with one more sequence (a new dataset version at the same location).
    """
    from unihope.storage.schema import AnnotatedFrame, FrameRecord
    from unihope.storage.writer import finalize, write_shard
    from unihope.tasks.common import on_render_thread
    from unihope.tasks.resources import worker_resources
    from unihope.buildplan.output_items import dataset_attrs
    from unihope.deocclude import build_deoccluder
    from unihope.grasp import label_grasps
    from unihope.render.annotate import annotate_frames
    from unihope.sources import open_source
    from unihope.sources.synthetic import write_synthetic_dataset

    src = work / (f"src-{num_sequences}" if layout == "dexycb" else f"src-{layout}-{num_sequences}")
    synthetic = SyntheticConfig(format=layout, num_sequences=num_sequences,
                                frames_per_sequence=SMALL_FRAMES_PER_SEQUENCE, num_cameras=1, seed=0)
    on_render_thread(write_synthetic_dataset, src, synthetic, hand_cfg)
    cfg = PipelineConfig.model_validate({
        "name": "small", "source": {"kind": layout, "root": str(src)}, "hand": hand_cfg.model_dump(mode="json"),
        "crop": {"size_px": 64}, "deocclusion": {"backend": "render"}, "storage": {"shard_size": 64},
    })
    source = on_render_thread(open_source, cfg.source, cfg.hand)
    records = [r for r in source.load(source.index()) if isinstance(r, FrameRecord)]
    annotate = partial(annotate_frames, resources=worker_resources().annotation)
    outputs = on_render_thread(annotate, records, label_grasps(records, cfg.grasp), cfg.crop, cfg.render, cfg.hand)
    annotated = [a for a in outputs if isinstance(a, AnnotatedFrame)]
    results = build_deoccluder(cfg.deocclusion).run(annotated)
    attrs = dataset_attrs(cfg)
    write_shard(url, 0, annotated, results, attrs, cfg.storage)
    finalize(url, attrs, [])
    return cfg
