"""Training-set statistics that evaluation needs: mean pose, majority grasp, triangulated object keypoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from unihope import metrics as M
from unihope.hand.mirror import mirror_points_x
from unihope.storage.loader import make_loader
from unihope.train_config import TrainConfig


@dataclass(frozen=True)
class TrainStatistics:
    """What evaluation needs from the training split: baselines and the object keypoint models."""

    mean_joints_rel_m: np.ndarray  # (21, 3) mean wrist-relative joints (mirrored to right hands)
    majority_grasp: int  # most frequent grasp label
    num_samples: int
    object_keypoints_obj_m: dict[int, np.ndarray] = field(default_factory=dict)  # YCB id -> (21, 3)
    object_reprojection_px: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "mean_joints_rel_m": self.mean_joints_rel_m.tolist(),
            "majority_grasp": self.majority_grasp,
            "num_samples": self.num_samples,
            "object_keypoints_obj_m": {str(k): v.tolist() for k, v in self.object_keypoints_obj_m.items()},
            "object_reprojection_px": {str(k): v for k, v in self.object_reprojection_px.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> "TrainStatistics":
        return cls(
            mean_joints_rel_m=np.asarray(data["mean_joints_rel_m"], dtype=np.float64),
            majority_grasp=int(data["majority_grasp"]),
            num_samples=int(data["num_samples"]),
            object_keypoints_obj_m={int(k): np.asarray(v) for k, v in data["object_keypoints_obj_m"].items()},
            object_reprojection_px={int(k): float(v) for k, v in data["object_reprojection_px"].items()},
        )


def collect_train_statistics(dataset: torch.utils.data.Dataset, cfg: TrainConfig) -> TrainStatistics:
    """One pass over the training split: mean pose, majority grasp class, triangulated object keypoints.

    Object keypoints (the 21 box keypoints in the object frame) are triangulated per object id from
    the labelled 2D keypoints under the known object poses of every training sample; PnP at
    evaluation time needs them, and the shards carry no object meshes.
    """
    # 1. Gather labels (unmirrored for the object geometry, mirrored for the hand baseline)
    loader = make_loader(dataset, cfg.eval_batch_size, cfg.data.num_workers, shuffle=False)
    joints, grasps, kps, poses, Ks, ids = [], [], [], [], [], []
    for batch in loader:
        j = batch["joints_3d"].double()
        flip = torch.as_tensor(batch["hand_side"]).reshape(-1).bool()
        j = torch.where(flip[:, None, None], mirror_points_x(j), j)
        joints.append((j - j[:, :1]).numpy())
        grasps.append(np.asarray(batch["grasp"]).reshape(-1))
        kps.append(np.asarray(batch["object_keypoints_2d"], dtype=np.float64))
        poses.append(np.asarray(batch["object_pose"], dtype=np.float64))
        Ks.append(np.asarray(batch["K"], dtype=np.float64))
        ids.append(np.asarray(batch["object_id"]).reshape(-1))
    if not joints:
        raise ValueError("the training split is empty: nothing to train on (check --data and data.train_split)")
    joints_all, grasp_all, ids_all = np.concatenate(joints), np.concatenate(grasps), np.concatenate(ids)
    kps_all, poses_all, Ks_all = np.concatenate(kps), np.concatenate(poses), np.concatenate(Ks)

    # 2. Triangulate each object's keypoints
    keypoints, reprojection = {}, {}
    for object_id in np.unique(ids_all):
        chosen = ids_all == object_id
        tri = M.triangulate_object_keypoints(kps_all[chosen], poses_all[chosen], Ks_all[chosen])
        if tri is not None:
            keypoints[int(object_id)] = tri.points_obj_m
            reprojection[int(object_id)] = tri.reprojection_error_px
    counts = np.bincount(grasp_all.astype(np.int64), minlength=2)
    return TrainStatistics(
        mean_joints_rel_m=joints_all.mean(axis=0),
        majority_grasp=int(np.argmax(counts)),
        num_samples=len(joints_all),
        object_keypoints_obj_m=keypoints,
        object_reprojection_px=reprojection,
    )
