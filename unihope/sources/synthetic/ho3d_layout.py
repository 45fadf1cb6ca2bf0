"""The synthetic dataset in HO3D_v2's layout: sequence folders, meta pickles and the split list."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import trimesh

from unihope.config import SyntheticConfig
from unihope.hand.constants import MANO_TO_DEXYCB_JOINTS
from unihope.rotations import axis_angle_from_matrix
from unihope.sources.common import transform_mano_global
from unihope.sources.ho3d import GL_FROM_CV, encode_ho3d_depth
from unihope.sources.synthetic.common import TRUTH_DIR, seed_from
from unihope.sources.synthetic.files import write_png
from unihope.sources.synthetic.scene import SequenceWriter, subject_betas
from unihope.sources.ycb_meshes import YCB_NAMES

HO3D_SEQUENCE_NAMES = ("ABF10", "BB10", "GPMF10", "GSF10", "MC1", "MDF10", "ND2", "SB10", "ShSu10", "SiBF10",
                       "SiS1", "SM2", "SMu1", "SS1")  # fmt: skip
HO3D_SPLIT = "train"


def write_ho3d_layout(writer: SequenceWriter, cfg: SyntheticConfig) -> list[str]:
    # 1. Check inputs: HO3D_v2 has one camera per sequence and right hands only
    root = writer.root
    ho3d_from_dexycb = np.argsort(MANO_TO_DEXYCB_JOINTS)  # DexYCB order -> MANO 16 + tips (HO3D's order)
    sequence_keys, list_lines = [], []
    # 2. Sequences: plan, render, convert the labels to OpenGL coordinates and write
    for seq_idx in range(cfg.num_sequences):
        base = HO3D_SEQUENCE_NAMES[seq_idx % len(HO3D_SEQUENCE_NAMES)]
        name = base if seq_idx < len(HO3D_SEQUENCE_NAMES) else f"{base}{seq_idx // len(HO3D_SEQUENCE_NAMES)}"
        sequence_key = f"{HO3D_SPLIT}/{name}"
        betas = subject_betas(cfg, name)
        camera = writer.rig[seed_from(cfg.seed, sequence_key, "camera") % len(writer.rig)]
        seq = writer.plan_sequence(sequence_key, "right", betas, primary=camera)  # HO3D_v2 has right hands only
        obj_name = seq.grasped
        corners_rest = trimesh.bounds.corners(writer.objects[obj_name].mesh.bounds)
        grasp_idx = seq.ycb_names.index(obj_name)
        for _, frame_idx, view, labels in writer.render_sequence(seq, [camera]):
            seq_dir = root / sequence_key
            frame_name = f"{frame_idx:04d}"
            # OpenCV labels -> HO3D's OpenGL coordinates
            orient_gl, transl_gl = transform_mano_global(labels.orient_cam, labels.transl_cam, GL_FROM_CV, np.zeros(3),
                                                         seq.root_joint_rest_m)
            T_obj = labels.T_cam_from_objs[grasp_idx]
            R_gl, t_gl = GL_FROM_CV @ T_obj[:3, :3], GL_FROM_CV @ T_obj[:3, 3]
            meta = {
                "handPose": np.concatenate([orient_gl, labels.hand_pose]).astype(np.float64),
                "handBeta": betas.astype(np.float64),
                "handTrans": transl_gl.astype(np.float64),
                "handJoints3D": (labels.joints_cam_m @ GL_FROM_CV.T)[ho3d_from_dexycb].astype(np.float64),
                "objRot": axis_angle_from_matrix(R_gl)[:, None],  # (3, 1) as HO3D stores it
                "objTrans": t_gl.astype(np.float64),
                "objName": obj_name,
                "objLabel": YCB_NAMES.index(obj_name) + 1,
                "objCorners3DRest": corners_rest.astype(np.float64),
                "objCorners3D": (corners_rest @ R_gl.T + t_gl).astype(np.float64),
                "camMat": camera.K.astype(np.float64),
            }
            write_png(seq_dir / "rgb" / f"{frame_name}.png", cv2.cvtColor(view.color_rgb, cv2.COLOR_RGB2BGR))
            write_png(seq_dir / "depth" / f"{frame_name}.png", encode_ho3d_depth(view.depth_m))
            (seq_dir / "meta").mkdir(parents=True, exist_ok=True)
            with (seq_dir / "meta" / f"{frame_name}.pkl").open("wb") as handle:
                pickle.dump(meta, handle, protocol=2)
            write_png(root / TRUTH_DIR / sequence_key / "rgb" / f"{frame_name}.png", cv2.cvtColor(view.color_no_object_rgb, cv2.COLOR_RGB2BGR))
            writer.record_truth(f"{sequence_key}/{frame_name}", seq.trajectory.phases[frame_idx], view)
            list_lines.append(f"{name}/{frame_name}")
        sequence_keys.append(sequence_key)
    # 3. The split list files
    (root / f"{HO3D_SPLIT}.txt").write_text("\n".join(list_lines) + "\n")
    (root / "evaluation.txt").write_text("")
    return sequence_keys
