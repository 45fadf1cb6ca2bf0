"""UniHOPE's own DexYCB label files from a packed dataset version: sample list json, grasp and occlusion dicts.

What the released UniHOPE loader (data_loader/DEX_YCB_HOPE.py) reads, for setup `s` and mode `m`:
- `dex_ycb_{s}_{m}_data.json`: {"id_<i>": sample}, where i is the sample's index in dex-ycb-toolkit's
  enumeration of split `{s}_{m}` (subjects in split order, sequences sorted, cameras in split order,
  frames in order; frames are counted whether or not they are listed) and `sample` is what
  data_creation/create_dataset_dexycb.py stores: the toolkit's sample (color_file, depth_file,
  label_file relative to the DexYCB root, intrinsics {fx, fy, ppx, ppy}, ycb_ids, ycb_grasp_ind,
  mano_side, mano_betas; is_bop_target / is_grasp_target for test), the frame's label file without
  `seg` (joint_3d, joint_2d, pose_m, pose_y as nested lists) and object_seg_file;
- `grasp_{s}_{m}.npy`: np.save of a dict id -> bool (is grasping), read with np.load(allow_pickle=True).item();
- `hand_occ_{s}_{m}.npy`: the same for id -> float hand visibility (1.0 = not occluded; the loader
  calls a sample occluded when it is <= its occ_threshold, 0.8).
Only the dataset's samples are listed (a frame the build skipped has no id), so every listed id has
a grasp and an occlusion entry. Grasp and visibility are this dataset's regenerated labels.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from unihope.storage.io import write_file_atomic
from unihope.storage.view import open_dataset
from unihope.sources.dexycb import COLOR_FORMAT, DEPTH_FORMAT, LABEL_FORMAT, META_FILE, DexYCBSource
from unihope.sources.splits import dexycb_split

SETUPS = ("s0", "s1", "s2", "s3")
MODES = ("train", "val", "test")
BOP_SUBSAMPLE_STRIDE = 4  # dex-ycb-toolkit _BOP_EVAL_SUBSAMPLING_FACTOR: test targets are every 4th frame
LABEL_KEYS = ("joint_3d", "joint_2d", "pose_m", "pose_y")  # the label file minus `seg`
_SIDE_BY_CODE = {0: "right", 1: "left"}
_COLUMNS = ("sample_key", "sequence_key", "serial", "frame_idx", "dataset", "K_full", "hand_side", "mano_betas",
            "object_id", "grasp", "visibility")


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What `export_unihope_labels` wrote."""

    out_dir: Path
    version_id: str
    num_by_mode: dict[str, int]  # samples listed per mode (modes without samples are not written)
    files: tuple[Path, ...]


def toolkit_indices(dexycb_root: Path, split_name: str) -> dict[str, tuple[int, int, int]]:
    """sample key -> (toolkit index, frame, num_frames of its sequence) for every frame of a split.

    Raises:
        ValueError: on an unknown split or a sequence whose meta.yml has no num_frames.
    """
    split = dexycb_split(split_name)
    source = DexYCBSource(dexycb_root, split=split_name)
    indices: dict[str, tuple[int, int, int]] = {}
    for sequence_key in source.sequence_keys():
        meta_path = Path(dexycb_root) / sequence_key / META_FILE
        try:
            num_frames = int(yaml.safe_load(meta_path.read_text())["num_frames"])
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as err:
            raise ValueError(f"{meta_path}: cannot read num_frames ({err}); the toolkit enumeration needs it") from err
        for serial in split.serials:  # the toolkit's order: cameras outer, frames inner, per sequence
            for frame_idx in range(num_frames):
                indices[f"{sequence_key}/{serial}/{frame_idx:06d}"] = (len(indices), frame_idx, num_frames)
    return indices


def _label_fields(dexycb_root: Path, label_file: str) -> dict:
    path = Path(dexycb_root) / label_file
    try:
        with np.load(path, allow_pickle=False) as label:
            return {key: np.asarray(label[key]).tolist() for key in LABEL_KEYS}
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the label file ({err}); create_dataset_dexycb.py copies it") from err


def _sequence_meta(dexycb_root: Path, sequence_key: str, cache: dict) -> dict:
    if sequence_key not in cache:
        cache[sequence_key] = yaml.safe_load((Path(dexycb_root) / sequence_key / META_FILE).read_text())
    return cache[sequence_key]


def export_unihope_labels(
    url: str | os.PathLike, setup: str, out_dir: Path, dexycb_root: Path | None = None, version: str | None = None,
) -> ExportSummary:
    """Write UniHOPE's json, grasp and occlusion files for one DexYCB setup from a dataset version.

    Args:
        url: packed dataset (path or URL).
        setup: "s0" | "s1" | "s2" | "s3"; each sample goes to the mode (train/val/test) whose split holds it.
        out_dir: folder for the files (the UniHOPE loader's dataset_root).
        dexycb_root: the DexYCB tree the dataset was built from (meta.yml, label files); None = the
            `source.root` stored in the dataset's config.
        version: dataset version id (unihope.storage.versions); None = the newest.

    Returns:
        ExportSummary.

    Raises:
        ValueError: on an unknown setup, a dataset that is not DexYCB, no DexYCB root, or a sample
            that is in none of the setup's splits.
        unihope.storage.manifest.StoreError: on a damaged dataset.
    """
    # 1. Check inputs
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")
    view = open_dataset(url, version=version)
    columns = {name: view.column(name) for name in _COLUMNS} if view.num_samples else {}
    if not columns:
        raise ValueError(f"{url}: the dataset has no samples")
    kinds = set(columns["dataset"].tolist())
    if kinds != {"dexycb"}:
        raise ValueError(f"{url}: export-unihope writes DexYCB label files; the dataset holds {sorted(kinds)}")
    if dexycb_root is None:
        stored = (view.manifest.attrs.config.get("source", {}) if view.manifest is not None else {}).get("root")
        if not stored:
            raise ValueError(f"{url}: the dataset's config names no source.root; pass --dexycb-root")
        dexycb_root = Path(stored)
    dexycb_root = Path(dexycb_root)
    if not dexycb_root.is_dir():
        raise ValueError(f"DexYCB root {dexycb_root} is not a folder")

    # 2. Each sample's mode and toolkit index
    keys = columns["sample_key"].tolist()
    placed: dict[str, list[tuple[int, int]]] = {mode: [] for mode in MODES}  # mode -> (toolkit idx, row)
    enumerations = {mode: toolkit_indices(dexycb_root, f"{setup}_{mode}") for mode in MODES}
    for row, key in enumerate(keys):
        modes = [mode for mode in MODES if key in enumerations[mode]]
        if not modes:
            raise ValueError(f"sample {key} is in none of {setup}'s splits (train/val/test); was the dataset built "
                             f"from this DexYCB tree?")
        placed[modes[0]].append((enumerations[modes[0]][key][0], row))

    # 3. One json and two dicts per mode that has samples
    out_dir = Path(out_dir)
    files: list[Path] = []
    meta_cache: dict = {}
    counts: dict[str, int] = {}
    for mode, entries in placed.items():
        if not entries:
            continue
        samples, grasp, occlusion = {}, {}, {}
        for toolkit_idx, row in sorted(entries):
            sample_id = f"id_{toolkit_idx}"
            sequence_key, serial = str(columns["sequence_key"][row]), str(columns["serial"][row])
            frame_idx = int(columns["frame_idx"][row])
            folder = f"{sequence_key}/{serial}"
            meta = _sequence_meta(dexycb_root, sequence_key, meta_cache)
            K = np.asarray(columns["K_full"][row], dtype=np.float64)
            sample = {
                "color_file": f"{folder}/{COLOR_FORMAT.format(frame_idx)}",
                "depth_file": f"{folder}/{DEPTH_FORMAT.format(frame_idx)}",
                "label_file": f"{folder}/{LABEL_FORMAT.format(frame_idx)}",
                "intrinsics": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "ppx": float(K[0, 2]), "ppy": float(K[1, 2])},
                "ycb_ids": [int(i) for i in meta["ycb_ids"]],
                "ycb_grasp_ind": int(meta["ycb_grasp_ind"]),
                "mano_side": _SIDE_BY_CODE[int(columns["hand_side"][row])],
                "mano_betas": [float(b) for b in columns["mano_betas"][row]],
            }
            if mode == "test":
                _, frame, num_frames = enumerations[mode][keys[row]]
                is_bop = frame % BOP_SUBSAMPLE_STRIDE == 0
                sample["is_bop_target"] = bool(is_bop)
                sample["is_grasp_target"] = bool(is_bop and frame + BOP_SUBSAMPLE_STRIDE >= num_frames)
            sample.update(_label_fields(dexycb_root, sample["label_file"]))
            sample["object_seg_file"] = "object_render/" + sample["color_file"].replace(
                "color", "grasp_object_seg").replace("jpg", "png")
            samples[sample_id] = sample
            grasp[sample_id] = bool(columns["grasp"][row])
            occlusion[sample_id] = float(columns["visibility"][row])
        json_path = out_dir / f"dex_ycb_{setup}_{mode}_data.json"
        write_file_atomic(json_path, json.dumps(samples).encode())
        for name, values in ((f"grasp_{setup}_{mode}.npy", grasp), (f"hand_occ_{setup}_{mode}.npy", occlusion)):
            buffer = io.BytesIO()
            np.save(buffer, values, allow_pickle=True)  # the upstream format: a pickled dict in a 0-d array
            write_file_atomic(out_dir / name, buffer.getvalue())
            files.append(out_dir / name)
        files.append(json_path)
        counts[mode] = len(samples)
    view.close()
    return ExportSummary(out_dir=out_dir, version_id=view.version_id, num_by_mode=counts, files=tuple(files))
