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
  calls a sample occluded when it is <= its occ_threshold, 0.8);
- `object_render/<sequence>/<serial>/grasp_object_seg_<frame>.png` (the sample's `object_seg_file`):
  an 8-bit grey image of the full frame, non-zero on the grasped object (the loader's object mask is
  `pixel != 0`); written from the label file's `seg` (the object's visible pixels) where absent;
- `models/<name>/points.xyz` for all 21 YCB objects (the loader reads every one at start-up, and
  takes each object's 21 box keypoints from their min/max): copied from the tree, or, where the tree
  has the mesh but no points, the mesh vertices (so the box is the one the build cropped with); an
  object the tree does not hold at all gets a one-point placeholder at its origin (listed in the
  summary; no exported sample grasps it).
Only the dataset's samples are listed (a frame the build skipped has no id), so every listed id has
a grasp and an occlusion entry. Grasp and visibility are this dataset's regenerated labels.

Paths in the json are relative to `out_dir` (the loader's dataset_root): the DexYCB-relative
paths upstream writes when `out_dir` is the DexYCB root, `../`-paths into the tree otherwise.
`mano_betas` are the calibration's float64 values (upstream copies them from mano.yml), not the
stored float32 column. Each sample also carries its crop in UniHOPE's convention (`crop_center`,
`crop_scale`, `crop_affine`, as `get_affine_transform(center, scale, res)` returns it; the loader
ignores keys it does not read): the stored `crop_affine` is cv2's (pixel centres at integers).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh
import yaml

from unihope.crop import unihope_affine
from unihope.storage.io import write_file_atomic
from unihope.storage.view import open_dataset
from unihope.sources.dexycb import COLOR_FORMAT, DEPTH_FORMAT, LABEL_FORMAT, META_FILE, DexYCBSource
from unihope.sources.splits import dexycb_split
from unihope.sources.ycb_meshes import MESH_FILE_NAME, POINTS_FILE_NAME, YCB_NAMES

SETUPS = ("s0", "s1", "s2", "s3")
MODES = ("train", "val", "test")
BOP_SUBSAMPLE_STRIDE = 4  # dex-ycb-toolkit _BOP_EVAL_SUBSAMPLING_FACTOR: test targets are every 4th frame
LABEL_KEYS = ("joint_3d", "joint_2d", "pose_m", "pose_y")  # the label file minus `seg`
_SIDE_BY_CODE = {0: "right", 1: "left"}
_COLUMNS = ("sample_key", "sequence_key", "serial", "frame_idx", "dataset", "K_full", "hand_side", "object_id",
            "grasp", "visibility", "crop_affine", "crop_box_xyxy")
OBJECT_RENDER_DIR = "object_render"  # upstream's folder of grasped-object masks, under the dataset root
OBJECT_SEG_VALUE = 255  # any non-zero grey marks the object (the loader masks `pixel != 0`)
MODELS_DIR = "models"


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What `export_unihope_labels` wrote."""

    out_dir: Path
    version_id: str
    num_by_mode: dict[str, int]  # samples listed per mode (modes without samples are not written)
    files: tuple[Path, ...]  # the json / npy label files
    num_masks_written: int  # object masks written (existing ones are kept)
    placeholder_models: tuple[str, ...]  # YCB objects the tree lacks: one-point points.xyz stand-ins


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


def _label_fields(dexycb_root: Path, label_file: str) -> tuple[dict, np.ndarray]:
    """The label file's fields upstream copies into the json, and its (H, W) segmentation."""
    path = Path(dexycb_root) / label_file
    try:
        with np.load(path, allow_pickle=False) as label:
            return {key: np.asarray(label[key]).tolist() for key in LABEL_KEYS}, np.asarray(label["seg"])
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the label file ({err}); create_dataset_dexycb.py copies it") from err


def _calibration_betas(dexycb_root: Path, meta: dict) -> list[float]:
    """The sequence's MANO betas as the calibration file holds them (float64, as upstream exports them)."""
    path = Path(dexycb_root) / "calibration" / f"mano_{meta['mano_calib'][0]}" / "mano.yml"
    try:
        return [float(b) for b in yaml.safe_load(path.read_text())["betas"]]
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read betas ({err})") from err


def _write_object_mask(path: Path, seg: np.ndarray, object_id: int) -> bool:
    """Write the grasped object's full-frame mask unless the file exists; True when written."""
    if path.exists():
        return False
    mask = np.where(seg == object_id, OBJECT_SEG_VALUE, 0).astype(np.uint8)
    is_ok, encoded = cv2.imencode(".png", mask)
    if not is_ok:
        raise ValueError(f"cannot encode the object mask for {path}")
    write_file_atomic(path, encoded.tobytes())
    return True


def write_model_points(dexycb_root: Path, out_dir: Path) -> tuple[str, ...]:
    """Make `out_dir/models/<name>/points.xyz` exist for all 21 YCB objects (see the module docstring).

    Returns:
        The names that got a one-point placeholder (the tree has neither points nor mesh for them).
    """
    placeholders = []
    for name in YCB_NAMES:
        target = Path(out_dir) / MODELS_DIR / name / POINTS_FILE_NAME
        if target.exists():
            continue
        source_points = Path(dexycb_root) / MODELS_DIR / name / POINTS_FILE_NAME
        mesh_path = Path(dexycb_root) / MODELS_DIR / name / MESH_FILE_NAME
        if source_points.is_file():
            write_file_atomic(target, source_points.read_bytes())
            continue
        if mesh_path.is_file():
            vertices = np.asarray(trimesh.load(mesh_path, force="mesh", process=False, skip_materials=True).vertices)
        else:
            vertices = np.zeros((1, 3))
            placeholders.append(name)
        # repr precision: the loader's parse gives back the very vertices, so the box keypoints match
        text = "".join(f"{x!r} {y!r} {z!r}\n" for x, y, z in vertices.astype(np.float64).tolist())
        write_file_atomic(target, text.encode())
    return tuple(placeholders)


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

    # 3. One json and two dicts per mode that has samples, and each sample's object mask
    out_dir = Path(out_dir)
    files: list[Path] = []
    meta_cache: dict = {}
    counts: dict[str, int] = {}
    num_masks = 0
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
            color_file = f"{folder}/{COLOR_FORMAT.format(frame_idx)}"  # relative to the DexYCB root
            box = np.asarray(columns["crop_box_xyxy"][row], dtype=np.float64)
            sample = {
                "color_file": _from_out(dexycb_root, out_dir, color_file),
                "depth_file": _from_out(dexycb_root, out_dir, f"{folder}/{DEPTH_FORMAT.format(frame_idx)}"),
                "label_file": _from_out(dexycb_root, out_dir, f"{folder}/{LABEL_FORMAT.format(frame_idx)}"),
                "intrinsics": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "ppx": float(K[0, 2]), "ppy": float(K[1, 2])},
                "ycb_ids": [int(i) for i in meta["ycb_ids"]],
                "ycb_grasp_ind": int(meta["ycb_grasp_ind"]),
                "mano_side": _SIDE_BY_CODE[int(columns["hand_side"][row])],
                "mano_betas": _calibration_betas(dexycb_root, meta),
                "crop_center": [float(round(c)) for c in (box[:2] + box[2:]) / 2.0],  # upstream: int centre
                "crop_scale": float(box[2] - box[0]),
                "crop_affine": unihope_affine(columns["crop_affine"][row]).tolist(),
            }
            if mode == "test":
                _, frame, num_frames = enumerations[mode][keys[row]]
                is_bop = frame % BOP_SUBSAMPLE_STRIDE == 0
                sample["is_bop_target"] = bool(is_bop)
                sample["is_grasp_target"] = bool(is_bop and frame + BOP_SUBSAMPLE_STRIDE >= num_frames)
            fields, seg = _label_fields(dexycb_root, f"{folder}/{LABEL_FORMAT.format(frame_idx)}")
            sample.update(fields)
            sample["object_seg_file"] = f"{OBJECT_RENDER_DIR}/" + color_file.replace(
                "color", "grasp_object_seg").replace("jpg", "png")
            grasped_id = int(meta["ycb_ids"][int(meta["ycb_grasp_ind"])])
            num_masks += _write_object_mask(out_dir / sample["object_seg_file"], seg, grasped_id)
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

    # 4. The object point files the loader reads at start-up
    placeholders = write_model_points(dexycb_root, out_dir)
    return ExportSummary(out_dir=out_dir, version_id=view.version_id, num_by_mode=counts, files=tuple(files),
                         num_masks_written=num_masks, placeholder_models=placeholders)


def _from_out(dexycb_root: Path, out_dir: Path, relative_to_root: str) -> str:
    """A DexYCB-relative path re-expressed relative to out_dir (unchanged when out_dir is the root)."""
    return Path(os.path.relpath(Path(dexycb_root) / relative_to_root, out_dir)).as_posix()
