"""De-occluder training pairs: synthetic frames cut by the build's own stages, with their true object-free crops.

The synthetic source renders every view twice: as the dataset shows it and without the grasped object
(`truth/`, never read by a build stage). Here the frames go through the build's own stages (source ->
grasp labels -> `annotate_frames`: crop, masks, rendered hand), the inpaint mask and depth hint are made by
the de-occluder's own functions (`inpaint_mask`, `controlnet_backend.working_inputs`), and the truth view
is cut with each frame's crop affine exactly as the crop was cut. Only this module, the training flow and
benchmarks read `truth/`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unihope.config import CropConfig, DeocclusionConfig, GraspConfig, HandModelConfig, RenderConfig, SourceConfig
from unihope.config import SyntheticConfig
from unihope.deocclude.base import occluded_pixels
from unihope.deocclude.controlnet_backend import working_image, working_inputs
from unihope.deocclude.hints import inpaint_mask
from unihope.deocclude.scoring import MIN_COLOUR_PIXELS
from unihope.storage.schema import AnnotatedFrame, Skip

TRUTH_DIR = "truth"  # unihope.sources.synthetic.TRUTH_DIR


@dataclass(frozen=True, slots=True)
class PairArrays:
    """Training pairs at the working size, stacked (N first)."""

    sample_keys: tuple[str, ...]
    images: np.ndarray  # (N, W, W, 3) uint8 occluded crops
    masks: np.ndarray  # (N, W, W) bool inpaint masks
    depth_hints: np.ndarray  # (N, W, W, 3) uint8
    targets: np.ndarray  # (N, W, W, 3) uint8 object-free truth crops
    visibility: np.ndarray  # (N,) float

    def __len__(self) -> int:
        return len(self.sample_keys)


def dataset_version(synth_cfg: SyntheticConfig, crop_cfg: CropConfig) -> str:
    """A short id of the data a de-occluder was trained on: generator version + source and crop configs."""
    from unihope.sources.synthetic import GENERATOR_VERSION

    payload = json.dumps({"generator_version": GENERATOR_VERSION, "synthetic": synth_cfg.model_dump(mode="json"),
                          "crop": crop_cfg.model_dump(mode="json")}, sort_keys=True)
    return f"synthetic-v{GENERATOR_VERSION}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def synthetic_frames(
    root: Path, synth_cfg: SyntheticConfig, crop_cfg: CropConfig, sequences: set[str] | None = None
) -> list[AnnotatedFrame]:
    """Write (or reuse) the synthetic dataset at `root` and annotate its frames as a build does.

    Args:
        root: dataset folder.
        synth_cfg: the synthetic source's config.
        crop_cfg: the build's crop config.
        sequences: only these `<subject>/<sequence>` (None: all).
    """
    from unihope.grasp import label_grasps
    from unihope.render.annotate import AnnotationResources, annotate_frames
    from unihope.sources import open_source
    from unihope.sources.synthetic import write_synthetic_dataset

    hand_cfg = HandModelConfig()
    write_synthetic_dataset(root, synth_cfg, hand_cfg)
    source = open_source(SourceConfig(kind=synth_cfg.format, root=root), hand_cfg)
    refs = [ref for ref in source.index() if sequences is None or ref.sequence_key in sequences]
    frames = [f for f in source.load(refs) if not isinstance(f, Skip)]
    annotated = annotate_frames(frames, label_grasps(frames, GraspConfig()), crop_cfg, RenderConfig(), hand_cfg,
                                resources=AnnotationResources())
    return [a for a in annotated if isinstance(a, AnnotatedFrame)]


def truth_crop(root: Path, frame: AnnotatedFrame) -> np.ndarray:
    """The object-free truth view of a DexYCB-layout synthetic frame, cut with the frame's crop affine."""
    return truth_crop_of_key(root, frame.frame.sample_key, frame.crop.affine, frame.crop.size_px)


def truth_crop_of_key(root: Path, sample_key: str, crop_affine: np.ndarray, size_px: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB: the object-free truth view of `sample_key` cut with `crop_affine` (a stored
    sample's `crop_affine` column too), exactly as annotation cut the input crop.

    Raises:
        FileNotFoundError: when the truth image is missing (not a synthetic dataset, or another one).
    """
    sequence_dir, frame_idx = sample_key.rsplit("/", 1)
    path = Path(root) / TRUTH_DIR / sequence_dir / f"color_{int(frame_idx):06d}.jpg"
    image_bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image_bgr is None:
        raise FileNotFoundError(f"truth image missing for {sample_key}: {path}")
    crop_bgr = cv2.warpAffine(image_bgr, np.asarray(crop_affine, dtype=np.float64), (size_px, size_px),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)


def sequence_of(frame: AnnotatedFrame) -> str:
    """`<subject>/<sequence>` of a DexYCB-layout sample key `<subject>/<sequence>/<serial>/<frame>`."""
    return "/".join(frame.frame.sample_key.split("/")[:2])


def heldout_sequences(root: Path, synth_cfg: SyntheticConfig, heldout: int) -> list[str]:
    """The `<subject>/<sequence>` names `split_heldout` holds out, read from the source's index (no frame parsed)."""
    from unihope.sources import open_source

    source = open_source(SourceConfig(kind=synth_cfg.format, root=root), HandModelConfig())
    sequences = sorted({ref.sequence_key for ref in source.index()})
    return sequences[len(sequences) - heldout:] if heldout else []


def split_heldout(frames: list[AnnotatedFrame], heldout_sequences: int) -> tuple[list[AnnotatedFrame], list[AnnotatedFrame]]:
    """(train, held-out): the last `heldout_sequences` sequences (sorted by name) are held out."""
    sequences = sorted({sequence_of(f) for f in frames})
    heldout = set(sequences[len(sequences) - heldout_sequences:]) if heldout_sequences else set()
    return [f for f in frames if sequence_of(f) not in heldout], [f for f in frames if sequence_of(f) in heldout]


def is_trainable(frame: AnnotatedFrame) -> bool:
    """A frame teaches the de-occluder something: some hand is hidden and enough is visible to condition on."""
    return occluded_pixels(frame) > 0 and np.count_nonzero(frame.mask_hand_visible) >= MIN_COLOUR_PIXELS


def make_pairs(
    root: Path, frames: list[AnnotatedFrame], deocc_cfg: DeocclusionConfig, size_px: int
) -> PairArrays:
    """Training pairs of `frames` (the trainable ones) at the working size.

    Args:
        root: the synthetic dataset (its `truth/` is read).
        frames: annotated crops.
        deocc_cfg: mask settings (mask_region, mask_dilation_px), as the build uses them.
        size_px: the models' working size.

    Returns:
        The stacked pairs.

    Raises:
        ValueError: when no frame is trainable.
    """
    keys, images, masks, hints, targets, visibility = [], [], [], [], [], []
    for frame in frames:
        if not is_trainable(frame):
            continue
        mask = inpaint_mask(frame, deocc_cfg.mask_dilation_px, deocc_cfg.mask_region)
        working = working_inputs(frame, mask, size_px)
        keys.append(frame.frame.sample_key)
        images.append(working.image)
        masks.append(working.mask)
        hints.append(working.depth_hint)
        targets.append(working_image(truth_crop(root, frame), size_px))
        visibility.append(frame.visibility)
    if not keys:
        raise ValueError("no trainable frame (some hand hidden, >= 20 visible hand pixels) in the synthetic data: "
                         "raise data.synthetic.num_sequences or frames_per_sequence")
    return PairArrays(sample_keys=tuple(keys), images=np.stack(images), masks=np.stack(masks),
                      depth_hints=np.stack(hints), targets=np.stack(targets), visibility=np.asarray(visibility))

