"""HO3D_v2 reader: `{train,evaluation}/<seq>/{rgb,depth,meta}` -> FrameRef listing -> FrameRecord / Skip.

HO3D stores its annotations in OpenGL camera coordinates (y up, z backwards). Every label is turned
into the pipeline's OpenCV frame with F = diag(1, -1, -1): points and the object pose by left
multiplication, the MANO global orientation by R' = F R, and the MANO translation so that the hand
layer reproduces the converted joints (MANO rotates about the rest root joint j0, hence
t' = F (j0 + t) - j0; see `common.transform_mano_global`).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import cv2
import numpy as np

from unihope.storage.schema import NUM_JOINTS, NUM_MANO_BETAS, NUM_MANO_POSE, FrameRecord, FrameRef, Skip, SkipReason
from unihope.config import TIP_CONVENTION_OF_LAYOUT, HandModelConfig
from unihope.hand.constants import MANO_TO_DEXYCB_JOINTS
from unihope.render.camera import project_points
from unihope.rotations import matrix_from_axis_angle
from unihope.sources.common import (
    FrameFileError,
    check_color_matches_depth,
    hand_model_path,
    image_size_wh,
    load_each,
    png_size_wh,
    skip,
    transform_mano_global,
)
from unihope.sources.splits import ho3d_split
from unihope.sources.ycb_meshes import MESH_FILE_NAME, YCB_NAMES

DATASET = "ho3d"
HO3D_SERIAL = "0"  # one camera per sequence
HO3D_HAND_SIDE = "right"  # HO3D_v2 has right hands only
RGB_SUFFIXES = (".png", ".jpg")  # v2 ships PNG, v3 JPEG
FRAME_NAME = "{:04d}"
GL_FROM_CV = np.diag([1.0, -1.0, -1.0])  # its own inverse
# Depth PNG: metres = (R + 256 G) * scale (HO3D's encoding of 16-bit depth in two 8-bit channels).
HO3D_DEPTH_SCALE_M = 0.00012498664727900177
GRASP_REFERENCE_FRAME_IDX = 0  # the object's motion is measured against the sequence's frame 0 (as DexYCB's)
META_KEYS = ("handPose", "handBeta", "handTrans", "handJoints3D", "objRot", "objTrans", "objName", "camMat")

# HO3D stores 21 joints as MANO's 16 followed by the 5 tips (thumb..little), the same order as
# unihope.hand's internal one; MANO_TO_DEXYCB_JOINTS reorders them to the pipeline's DexYCB order.
HO3D_TO_DEXYCB_JOINTS = MANO_TO_DEXYCB_JOINTS


class _MetaUnpickler(pickle.Unpickler):
    """Unpickles HO3D meta files (dicts of numpy arrays, strings, numbers) and nothing else.

    HO3D's annotations are pickles; a pickle can run code, so only numpy's array reconstruction
    globals are resolved and the files are read only from the dataset root the user points at.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"HO3D meta may only hold numpy arrays; refusing global {module}.{name}")
        return super().find_class(module, name)


def load_ho3d_meta(path: Path, root: Path) -> dict:
    """Read one HO3D meta pickle that lies inside `root`.

    A symlink (a meta file or a folder above it) whose real path leaves the root is refused, not
    followed: the frame is skipped as OUTSIDE_ROOT and the rest of the build goes on.

    Raises:
        FrameFileError: MISSING_FILE when absent, CORRUPT_FILE when it cannot be unpickled safely,
            OUTSIDE_ROOT when its real path lies outside `root`.
    """
    path, root = Path(path), Path(root)
    if not path.resolve().is_relative_to(root.resolve()):
        raise FrameFileError(SkipReason.OUTSIDE_ROOT, f"refusing to read HO3D meta {path}: its real path "
                                                      f"{path.resolve()} lies outside the dataset root {root}")
    if not path.is_file():
        raise FrameFileError(SkipReason.MISSING_FILE, f"missing file {path}")
    try:
        meta = _MetaUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: unreadable meta pickle ({err})") from err
    if not isinstance(meta, dict):
        raise FrameFileError(SkipReason.CORRUPT_FILE, f"{path}: meta is a {type(meta).__name__}, expected a dict")
    return meta


def decode_ho3d_depth_m(depth_bgr: np.ndarray) -> np.ndarray:
    """Metres from an HO3D depth PNG as cv2 reads it (BGR): (R + 256 G) * scale."""
    depth = depth_bgr[..., 2].astype(np.float64) + 256.0 * depth_bgr[..., 1].astype(np.float64)
    return (depth * HO3D_DEPTH_SCALE_M).astype(np.float32)


def encode_ho3d_depth(depth_m: np.ndarray) -> np.ndarray:
    """An HO3D depth PNG (BGR uint8, for cv2.imwrite) from metres; the inverse of `decode_ho3d_depth_m`."""
    units = np.clip(np.round(np.asarray(depth_m, dtype=np.float64) / HO3D_DEPTH_SCALE_M), 0, 65535).astype(np.uint32)
    out = np.zeros(units.shape + (3,), dtype=np.uint8)
    out[..., 2] = units % 256
    out[..., 1] = units // 256
    return out


class HO3DSource:
    """Frames of an HO3D_v2 tree (real or synthetic).

    Args:
        root: the HO3D_v2 folder (holding `train/`, `evaluation/`, `train.txt`, `evaluation.txt`).
        split: "all", "train" or "evaluation".
        hand_cfg: which MANO files give the rest root joint used to convert the translation.
        models_dir: YCB models folder (`<name>/textured_simple.obj`); default `<root>/models`.
        max_frames: keep only the first N listed frames; None = all.
        tip_convention: whose fingertip vertices handJoints3D uses; HO3D's is its toolkit's ("ho3d").

    Raises:
        ValueError: when the root is not a folder, the split or the tip convention is unknown.
    """

    dataset = DATASET

    def __init__(
        self,
        root: Path,
        split: str = "all",
        hand_cfg: HandModelConfig | None = None,
        models_dir: Path | None = None,
        max_frames: int | None = None,
        tip_convention: str = TIP_CONVENTION_OF_LAYOUT[DATASET],
    ):
        from unihope.hand import tip_vertex_ids

        tip_vertex_ids(tip_convention, HO3D_HAND_SIDE)  # raises on an unknown convention
        self.tip_convention = tip_convention
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"HO3D root {self.root} is not a folder; point source.root at the HO3D_v2 folder")
        self.split_name = split
        self.folders = ho3d_split(split)
        self.hand_cfg = hand_cfg or HandModelConfig()
        self.models_dir = Path(models_dir) if models_dir is not None else self.root / "models"
        self.max_frames = max_frames
        self._layer = None
        self._references: dict[str, np.ndarray | Skip] = {}

    def index(self) -> list[FrameRef]:
        """Every frame of the split: from `<split>.txt` when present, else from the rgb folders."""
        refs: list[FrameRef] = []
        for folder in self.folders:
            for seq, frame_idx in self._list_folder(folder):
                refs.append(
                    FrameRef(
                        sample_key=f"{folder}/{seq}/{frame_idx:04d}",
                        sequence_key=f"{folder}/{seq}",
                        serial=HO3D_SERIAL,
                        frame_idx=frame_idx,
                    )
                )
                if self.max_frames is not None and len(refs) >= self.max_frames:
                    return refs
        return refs

    def _list_folder(self, folder: str) -> list[tuple[str, int]]:
        list_path = self.root / f"{folder}.txt"
        if list_path.is_file():
            items = []
            for line in list_path.read_text().split():
                seq, _, frame = line.strip().partition("/")
                if seq and frame.isdigit():
                    items.append((seq, int(frame)))
            return sorted(items)
        folder_dir = self.root / folder
        if not folder_dir.is_dir():
            return []
        items = []
        for seq_dir in sorted(p for p in folder_dir.iterdir() if p.is_dir()):
            frames = {int(p.stem) for suffix in RGB_SUFFIXES for p in (seq_dir / "rgb").glob(f"*{suffix}") if p.stem.isdigit()}
            items += [(seq_dir.name, f) for f in sorted(frames)]
        return items

    def _hand_layer(self):
        if self._layer is None:
            from unihope.hand import HandLayer

            self._layer = HandLayer(side=HO3D_HAND_SIDE, model_path=hand_model_path(self.hand_cfg, HO3D_HAND_SIDE),
                                    tip_convention=self.tip_convention)
        return self._layer

    def load(self, refs: list[FrameRef]) -> list[FrameRecord | Skip]:
        """Parse the frames; a bad frame becomes a Skip with its reason, never an exception.

        Args:
            refs: frames from `index()`.

        Returns:
            One FrameRecord or Skip per ref, in the order given.
        """
        parsed: list[dict | Skip] = load_each(refs, self._parse_one)
        # One batched hand-layer call gives every frame's rest root joint (it depends on betas only).
        valid = [p for p in parsed if isinstance(p, dict)]
        if valid:
            betas = np.stack([p["betas"] for p in valid]).astype(np.float32)
            root_joints = self._rest_root_joints(betas)
            for item, root_joint in zip(valid, root_joints):
                item["root_joint_rest_m"] = root_joint
        return [p if isinstance(p, Skip) else self._to_record(p) for p in parsed]

    def _rest_root_joints(self, betas: np.ndarray) -> np.ndarray:
        layer = self._hand_layer()
        num = betas.shape[0]
        _, joints = layer.forward_numpy(np.zeros((num, NUM_MANO_POSE)), betas, np.zeros((num, 3)))
        return np.asarray(joints)[:, 0].astype(np.float64)

    def _grasp_reference(self, sequence_key: str) -> np.ndarray | Skip:
        """(3, 4) OpenCV camera-from-object pose in the sequence's frame-0 meta, or a Skip saying why not.

        The rule of DexYCB's grasp labels (UniHOPE): the reference is frame 0 whatever its hand
        annotation or image, read from its own meta file (with the same safe unpickler and root check).
        """
        if sequence_key not in self._references:
            folder, seq = sequence_key.split("/", 1)
            name = FRAME_NAME.format(GRASP_REFERENCE_FRAME_IDX)
            ref_key = f"{sequence_key}/{name}"
            try:
                meta = load_ho3d_meta(self.root / folder / seq / "meta" / f"{name}.pkl", self.root)
                R = matrix_from_axis_angle(meta["objRot"])
                t = np.asarray(meta["objTrans"], dtype=np.float64).reshape(3)
            except FrameFileError as err:
                self._references[sequence_key] = skip(ref_key, SkipReason.NO_REFERENCE_FRAME, f"grasp reference: {err.detail}")
            except (KeyError, TypeError, ValueError, cv2.error) as err:
                self._references[sequence_key] = skip(
                    ref_key, SkipReason.NO_REFERENCE_FRAME, f"grasp reference meta {name}.pkl: no object pose ({err!r})"
                )
            else:
                pose = np.concatenate([GL_FROM_CV @ R, (GL_FROM_CV @ t)[:, None]], axis=1)
                self._references[sequence_key] = (
                    pose.astype(np.float32) if np.all(np.isfinite(pose))
                    else skip(ref_key, SkipReason.NO_REFERENCE_FRAME, f"grasp reference meta {name}.pkl: non-finite object pose")
                )  # fmt: skip
        return self._references[sequence_key]

    def _parse_one(self, ref: FrameRef) -> dict | Skip:
        # 1. Files exist and are complete
        folder, seq = ref.sequence_key.split("/", 1)
        seq_dir = self.root / folder / seq
        name = FRAME_NAME.format(ref.frame_idx)
        image_path = next((seq_dir / "rgb" / f"{name}{s}" for s in RGB_SUFFIXES if (seq_dir / "rgb" / f"{name}{s}").is_file()),
                          seq_dir / "rgb" / f"{name}{RGB_SUFFIXES[0]}")  # fmt: skip
        depth_path = seq_dir / "depth" / f"{name}.png"
        size_wh = image_size_wh(image_path)
        check_color_matches_depth(image_path, size_wh, png_size_wh(depth_path))
        meta = load_ho3d_meta(seq_dir / "meta" / f"{name}.pkl", self.root)

        # 2. Annotation present (evaluation metas hold no hand pose) and finite
        missing = [k for k in META_KEYS if meta.get(k) is None]
        if missing:
            reason = SkipReason.NO_VALID_HAND if "handPose" in missing else SkipReason.CORRUPT_FILE
            return skip(ref.sample_key, reason, f"meta {name}.pkl lacks {', '.join(missing)}")
        try:
            arrays = {
                "pose": np.asarray(meta["handPose"], dtype=np.float64).reshape(NUM_MANO_POSE),
                "betas": np.asarray(meta["handBeta"], dtype=np.float64).reshape(NUM_MANO_BETAS),
                "trans": np.asarray(meta["handTrans"], dtype=np.float64).reshape(3),
                "joints": np.asarray(meta["handJoints3D"], dtype=np.float64).reshape(NUM_JOINTS, 3),
                "obj_rot": np.asarray(meta["objRot"], dtype=np.float64).reshape(3),
                "obj_trans": np.asarray(meta["objTrans"], dtype=np.float64).reshape(3),
                "K": np.asarray(meta["camMat"], dtype=np.float64).reshape(3, 3),
            }
        except (ValueError, TypeError) as err:
            return skip(ref.sample_key, SkipReason.CORRUPT_FILE, f"meta {name}.pkl: bad array shape ({err})")
        bad = [k for k, v in arrays.items() if not np.all(np.isfinite(v))]
        if bad:
            return skip(ref.sample_key, SkipReason.NAN_VALUE, f"meta {name}.pkl: non-finite {', '.join(bad)}")
        if np.all(arrays["pose"] == 0) or np.all(arrays["joints"] == 0):
            return skip(ref.sample_key, SkipReason.NO_VALID_HAND, f"meta {name}.pkl: hand pose or joints all zero")

        # 3. Object
        object_name = str(meta["objName"])
        if object_name not in YCB_NAMES:
            return skip(ref.sample_key, SkipReason.CORRUPT_FILE, f"meta {name}.pkl: unknown objName {object_name!r}")
        mesh_path = self.models_dir / object_name / MESH_FILE_NAME
        if not mesh_path.is_file():
            return skip(ref.sample_key, SkipReason.MESH_MISSING, f"missing object mesh {mesh_path}")

        # 4. Grasp reference: the sequence's frame 0
        reference_pose = self._grasp_reference(ref.sequence_key)
        if isinstance(reference_pose, Skip):
            return skip(ref.sample_key, reference_pose.reason, reference_pose.detail)
        return {"ref": ref, "image_path": image_path, "depth_path": depth_path, "size_wh": size_wh,
                "object_name": object_name, "mesh_path": mesh_path, "reference_pose": reference_pose, **arrays}  # fmt: skip

    def _to_record(self, item: dict) -> FrameRecord:
        # OpenGL -> OpenCV for joints, object pose and the MANO global parameters.
        ref: FrameRef = item["ref"]
        joints_cv = (item["joints"] @ GL_FROM_CV.T)[list(HO3D_TO_DEXYCB_JOINTS)]
        R_obj = matrix_from_axis_angle(item["obj_rot"])
        object_pose = np.concatenate([GL_FROM_CV @ R_obj, (GL_FROM_CV @ item["obj_trans"])[:, None]], axis=1)
        global_orient, transl = transform_mano_global(
            item["pose"][:3], item["trans"], GL_FROM_CV, np.zeros(3), item["root_joint_rest_m"]
        )
        mano_pose = np.concatenate([global_orient, item["pose"][3:]])
        return FrameRecord(
            sample_key=ref.sample_key,
            dataset=DATASET,
            sequence_key=ref.sequence_key,
            serial=ref.serial,
            frame_idx=ref.frame_idx,
            image_path=str(item["image_path"]),
            depth_path=str(item["depth_path"]),
            image_size_wh=item["size_wh"],
            K=item["K"],
            hand_side=HO3D_HAND_SIDE,
            mano_pose=mano_pose.astype(np.float32),
            mano_betas=item["betas"].astype(np.float32),
            mano_trans=transl.astype(np.float32),
            joints_3d=joints_cv.astype(np.float32),
            joints_2d=project_points(joints_cv, item["K"]).astype(np.float32),
            object_id=YCB_NAMES.index(item["object_name"]) + 1,
            object_name=item["object_name"],
            object_mesh_path=str(item["mesh_path"]),
            object_pose=object_pose.astype(np.float32),
            grasp_reference_pose=item["reference_pose"].copy(),
            grasp_reference_key=f"{ref.sequence_key}/{FRAME_NAME.format(GRASP_REFERENCE_FRAME_IDX)}",
        )
