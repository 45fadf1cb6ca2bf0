"""DexYCB reader: the dex-ycb-toolkit folder layout -> FrameRef listing -> FrameRecord / Skip."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from unihope.storage.schema import NUM_JOINTS, NUM_MANO_BETAS, FrameRecord, FrameRef, Skip, SkipReason
from unihope.config import TIP_CONVENTION_OF_LAYOUT, HandModelConfig
from unihope.hand import load_mano_arrays, pca_to_axis_angle, tip_vertex_ids
from unihope.sources.common import (
    FrameFileError,
    check_color_matches_depth,
    hand_model_path,
    image_size_wh,
    load_each,
    png_size_wh,
    skip,
)
from unihope.sources.splits import SplitSpec, dexycb_split
from unihope.sources.ycb_meshes import MESH_FILE_NAME, YCB_NAMES

DATASET = "dexycb"
COLOR_FORMAT = "color_{:06d}.jpg"
DEPTH_FORMAT = "aligned_depth_to_color_{:06d}.png"
LABEL_FORMAT = "labels_{:06d}.npz"
META_FILE = "meta.yml"
SEQUENCE_DIR_PATTERN = re.compile(r"^\d{8}_\d{6}$")
IMAGE_SIZE_TAG = "640x480"  # calibration/intrinsics/<serial>_640x480.yml
NUM_POSE_M = 51  # 3 global axis-angle + 45 PCA coefficients + 3 translation
INVALID_JOINT_VALUE = -1.0  # joint_3d is filled with -1 on frames without a hand
HAND_LABEL_KEYS = ("pose_y", "pose_m", "joint_3d", "joint_2d")
GRASP_REFERENCE_FRAME_IDX = 0  # UniHOPE measures the object's motion against labels_000000.npz of the camera


@dataclass(frozen=True, slots=True)
class DexYCBSequence:
    """What meta.yml and the calibration files say about one sequence."""

    sequence_key: str
    serials: tuple[str, ...]
    num_frames: int
    ycb_ids: tuple[int, ...]
    grasp_idx: int  # index into ycb_ids / pose_y of the grasped object
    hand_side: str
    betas: np.ndarray  # (10,) float32


class DexYCBSource:
    """Frames of a DexYCB tree (real or synthetic), filtered by a split of dex-ycb-toolkit's setups.

    Args:
        root: the DexYCB folder (holding the subject folders, `calibration/` and `models/`).
        split: "all" or "s{0..3}_{train,val,test}" (see `unihope.sources.splits`).
        hand_cfg: which MANO files convert the PCA poses (the components and mean of that model).
        max_frames: keep only the first N listed frames (quick runs); None = all.
        tip_convention: whose fingertip vertices the label files' joint_3d use; DexYCB's is manopth's
            (dex-ycb-toolkit's MANO layer).

    Raises:
        ValueError: when the root is not a folder, the split or the tip convention is unknown.
    """

    dataset = DATASET

    def __init__(self, root: Path, split: str = "all", hand_cfg: HandModelConfig | None = None, max_frames: int | None = None,
                 tip_convention: str = TIP_CONVENTION_OF_LAYOUT[DATASET]):  # fmt: skip
        tip_vertex_ids(tip_convention, "right")  # raises on an unknown convention
        self.tip_convention = tip_convention
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"DexYCB root {self.root} is not a folder; point source.root at the dataset folder")
        self.split_name = split
        self.split: SplitSpec = dexycb_split(split)
        self.hand_cfg = hand_cfg or HandModelConfig()
        self.max_frames = max_frames
        self._sequences: dict[str, DexYCBSequence | Skip] = {}
        self._intrinsics: dict[str, np.ndarray] = {}
        self._pca_arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._references: dict[tuple[str, str], np.ndarray | Skip] = {}

    # -- listing -------------------------------------------------------------------------------

    def sequence_keys(self) -> list[str]:
        """`<subject>/<sequence>` of every sequence in the split, in dex-ycb-toolkit order."""
        keys: list[str] = []
        for subject in self.split.subjects:
            subject_dir = self.root / subject
            if not subject_dir.is_dir():
                continue
            names = sorted(p.name for p in subject_dir.iterdir() if p.is_dir() and SEQUENCE_DIR_PATTERN.match(p.name))
            keys += [f"{subject}/{name}" for idx, name in enumerate(names) if self.split.sequence_rule(idx)]
        return keys

    def index(self) -> list[FrameRef]:
        """Every frame of the split as a FrameRef (reads meta.yml, parses no frame file)."""
        refs: list[FrameRef] = []
        allowed_serials = set(self.split.serials)
        for sequence_key in self.sequence_keys():
            sequence = self._sequence(sequence_key)
            if isinstance(sequence, Skip):
                # No readable meta.yml: list what is on disk so that load() reports each frame's skip.
                serials, frames = self._frames_on_disk(sequence_key)
            else:
                serials, frames = sequence.serials, range(sequence.num_frames)
            for serial in serials:
                if serial not in allowed_serials:
                    continue
                for frame_idx in frames:
                    key = f"{sequence_key}/{serial}/{frame_idx:06d}"
                    refs.append(FrameRef(sample_key=key, sequence_key=sequence_key, serial=serial, frame_idx=frame_idx))
                    if self.max_frames is not None and len(refs) >= self.max_frames:
                        return refs
        return refs

    def _frames_on_disk(self, sequence_key: str) -> tuple[list[str], list[int]]:
        seq_dir = self.root / sequence_key
        serials = sorted(p.name for p in seq_dir.iterdir() if p.is_dir())
        frames: set[int] = set()
        for serial in serials:
            frames |= {int(p.stem.split("_")[-1]) for p in (seq_dir / serial).glob("color_*.jpg")}
        return serials, sorted(frames)

    # -- per-sequence files --------------------------------------------------------------------

    def _sequence(self, sequence_key: str) -> DexYCBSequence | Skip:
        if sequence_key not in self._sequences:
            self._sequences[sequence_key] = self._read_sequence(sequence_key)
        return self._sequences[sequence_key]

    def _read_sequence(self, sequence_key: str) -> DexYCBSequence | Skip:
        meta_path = self.root / sequence_key / META_FILE
        try:
            meta = _read_yaml(meta_path)
            sides = meta["mano_sides"]
            calib = meta["mano_calib"]
            mano_path = self.root / "calibration" / f"mano_{calib[0]}" / "mano.yml"
            betas = np.asarray(_read_yaml(mano_path)["betas"], dtype=np.float32)
            if betas.shape != (NUM_MANO_BETAS,):
                raise FrameFileError(SkipReason.CORRUPT_FILE, f"{mano_path}: betas must have 10 values, got {betas.shape}")
            sequence = DexYCBSequence(
                sequence_key=sequence_key,
                serials=tuple(str(s) for s in meta["serials"]),
                num_frames=int(meta["num_frames"]),
                ycb_ids=tuple(int(i) for i in meta["ycb_ids"]),
                grasp_idx=int(meta["ycb_grasp_ind"]),
                hand_side=str(sides[0]),
                betas=betas,
            )
        except FrameFileError as err:
            return skip(sequence_key, err.reason, err.detail)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            return skip(sequence_key, SkipReason.CORRUPT_FILE, f"{meta_path}: missing or bad field ({err!r})")
        if sequence.hand_side not in ("right", "left"):
            return skip(sequence_key, SkipReason.CORRUPT_FILE, f"{meta_path}: mano_sides must be right/left")
        if not 0 <= sequence.grasp_idx < len(sequence.ycb_ids):
            return skip(sequence_key, SkipReason.CORRUPT_FILE, f"{meta_path}: ycb_grasp_ind out of range")
        return sequence

    def _K(self, serial: str) -> np.ndarray:
        if serial not in self._intrinsics:
            path = self.root / "calibration" / "intrinsics" / f"{serial}_{IMAGE_SIZE_TAG}.yml"
            try:
                color = _read_yaml(path)["color"]
                K = np.array(
                    [[color["fx"], 0.0, color["ppx"]], [0.0, color["fy"], color["ppy"]], [0.0, 0.0, 1.0]], dtype=np.float64
                )
            except (KeyError, TypeError) as err:
                raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: no color fx/fy/ppx/ppy ({err!r})") from err
            self._intrinsics[serial] = K
        return self._intrinsics[serial]

    def _pca(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """(hands_components (45, 45), hands_mean (45,)) of the MANO model of this side."""
        if side not in self._pca_arrays:
            arrays = load_mano_arrays(hand_model_path(self.hand_cfg, side))
            self._pca_arrays[side] = (arrays["hands_components"], arrays["hands_mean"])
        return self._pca_arrays[side]

    def _grasp_reference(self, sequence: DexYCBSequence, serial: str) -> np.ndarray | Skip:
        """(3, 4) float32 pose of the grasped object in frame 0 of this camera, or a Skip saying why not.

        As UniHOPE's grasp script: `pose_y[ycb_grasp_ind]` of `labels_000000.npz`, whether or not that
        frame has an annotated hand, a readable image, or is in the split / under max_frames.
        """
        cache_key = (sequence.sequence_key, serial)
        if cache_key not in self._references:
            path = self.root / sequence.sequence_key / serial / LABEL_FORMAT.format(GRASP_REFERENCE_FRAME_IDX)
            ref_key = f"{sequence.sequence_key}/{serial}/{GRASP_REFERENCE_FRAME_IDX:06d}"
            try:
                pose_y = _read_pose_y(path)
            except FrameFileError as err:
                self._references[cache_key] = skip(ref_key, SkipReason.NO_REFERENCE_FRAME,
                                                   f"grasp reference unreadable: {err.detail}")  # fmt: skip
            else:
                if pose_y.shape[0] <= sequence.grasp_idx or not np.all(np.isfinite(pose_y[sequence.grasp_idx])):
                    self._references[cache_key] = skip(
                        ref_key, SkipReason.NO_REFERENCE_FRAME,
                        f"grasp reference {path}: no finite pose_y row {sequence.grasp_idx} (ycb_grasp_ind)",
                    )
                else:
                    self._references[cache_key] = pose_y[sequence.grasp_idx].astype(np.float32)
        return self._references[cache_key]

    # -- loading -------------------------------------------------------------------------------

    def load(self, refs: list[FrameRef]) -> list[FrameRecord | Skip]:
        """Parse the frames; a bad frame becomes a Skip with its reason, never an exception.

        Args:
            refs: frames from `index()` (any subset, any order).

        Returns:
            One FrameRecord or Skip per ref, in the order given.
        """
        return load_each(refs, self._load_one)

    def _load_one(self, ref: FrameRef) -> FrameRecord | Skip:
        # 1. Sequence-level files (meta.yml, MANO calibration, intrinsics)
        sequence = self._sequence(ref.sequence_key)
        if isinstance(sequence, Skip):
            return skip(ref.sample_key, sequence.reason, sequence.detail)
        K = self._K(ref.serial)
        frame_dir = self.root / ref.sequence_key / ref.serial

        # 2. Frame files exist and are complete
        image_path = frame_dir / COLOR_FORMAT.format(ref.frame_idx)
        depth_path = frame_dir / DEPTH_FORMAT.format(ref.frame_idx)
        label_path = frame_dir / LABEL_FORMAT.format(ref.frame_idx)
        size_wh = image_size_wh(image_path)
        check_color_matches_depth(image_path, size_wh, png_size_wh(depth_path))
        labels = _read_labels(label_path)

        # 3. Values: finite, and a hand present
        bad = [name for name in HAND_LABEL_KEYS if not np.all(np.isfinite(labels[name]))]
        if bad:
            return skip(ref.sample_key, SkipReason.NAN_VALUE, f"{label_path}: non-finite values in {', '.join(bad)}")
        pose_m = labels["pose_m"].reshape(-1)
        joints_3d = labels["joint_3d"].reshape(NUM_JOINTS, 3)
        if np.all(joints_3d == INVALID_JOINT_VALUE) or np.all(pose_m == 0):
            return skip(ref.sample_key, SkipReason.NO_VALID_HAND,
                        f"{label_path}: hand not annotated (joint_3d all -1 or pose_m all 0; upstream skips it)")  # fmt: skip

        # 4. Grasped object and its mesh
        object_id = sequence.ycb_ids[sequence.grasp_idx]
        if not 1 <= object_id <= len(YCB_NAMES):
            return skip(ref.sample_key, SkipReason.CORRUPT_FILE, f"{ref.sequence_key}: YCB id {object_id} not in 1-21")
        object_name = YCB_NAMES[object_id - 1]
        mesh_path = self.root / "models" / object_name / MESH_FILE_NAME
        if not mesh_path.is_file():
            return skip(ref.sample_key, SkipReason.MESH_MISSING, f"missing object mesh {mesh_path}")
        pose_y = labels["pose_y"]
        if pose_y.shape[0] <= sequence.grasp_idx:
            return skip(ref.sample_key, SkipReason.CORRUPT_FILE, f"{label_path}: pose_y has no row {sequence.grasp_idx}")

        # 5. Grasp reference: frame 0 of this camera, from its own label file
        reference_pose = self._grasp_reference(sequence, ref.serial)
        if isinstance(reference_pose, Skip):
            return skip(ref.sample_key, reference_pose.reason, reference_pose.detail)

        # 6. MANO: PCA coefficients (flat_hand_mean=False) -> absolute axis-angle
        components, mean = self._pca(sequence.hand_side)
        hand_pose = pca_to_axis_angle(pose_m[None, 3:48].astype(np.float64), components, mean)[0]
        mano_pose = np.concatenate([pose_m[:3].astype(np.float64), hand_pose])

        return FrameRecord(
            sample_key=ref.sample_key,
            dataset=DATASET,
            sequence_key=ref.sequence_key,
            serial=ref.serial,
            frame_idx=ref.frame_idx,
            image_path=str(image_path),
            depth_path=str(depth_path),
            image_size_wh=size_wh,
            K=K.copy(),
            hand_side=sequence.hand_side,
            mano_pose=np.asarray(mano_pose, dtype=np.float32),
            mano_betas=sequence.betas.copy(),
            mano_trans=pose_m[48:51].astype(np.float32),
            joints_3d=joints_3d.astype(np.float32),
            joints_2d=labels["joint_2d"].reshape(NUM_JOINTS, 2).astype(np.float32),
            object_id=object_id,
            object_name=object_name,
            object_mesh_path=str(mesh_path),
            object_pose=pose_y[sequence.grasp_idx].astype(np.float32),
            grasp_reference_pose=reference_pose.copy(),
            grasp_reference_key=f"{ref.sequence_key}/{ref.serial}/{GRASP_REFERENCE_FRAME_IDX:06d}",
        )


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FrameFileError(SkipReason.MISSING_FILE, f"missing file {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: expected a mapping")
    return data


def _read_pose_y(path: Path) -> np.ndarray:
    """`pose_y` [n_obj, 3, 4] of one labels_*.npz (the grasp reference needs nothing else)."""
    if not path.is_file():
        raise FrameFileError(SkipReason.MISSING_FILE, f"missing file {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            pose_y = np.asarray(npz["pose_y"])
    except KeyError as err:
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: missing array {err}") from err
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: unreadable npz ({err})") from err
    if pose_y.ndim != 3 or pose_y.shape[1:] != (3, 4):
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: pose_y must be [n, 3, 4], got {pose_y.shape}")
    return pose_y


def _read_labels(path: Path) -> dict[str, np.ndarray]:
    """The hand/object arrays of one labels_*.npz (not `seg`, which the pipeline renders itself)."""
    if not path.is_file():
        raise FrameFileError(SkipReason.MISSING_FILE, f"missing file {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = {name: np.asarray(npz[name]) for name in HAND_LABEL_KEYS}
    except KeyError as err:
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: missing array {err}") from err
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: unreadable npz ({err})") from err
    shapes = {"pose_m": NUM_POSE_M, "joint_3d": NUM_JOINTS * 3, "joint_2d": NUM_JOINTS * 2}
    for name, size in shapes.items():
        if labels[name].size != size:
            raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: {name} has {labels[name].size} values, expected {size}")
    if labels["pose_y"].ndim != 3 or labels["pose_y"].shape[1:] != (3, 4):
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: pose_y must be [n, 3, 4], got {labels['pose_y'].shape}")
    return labels
