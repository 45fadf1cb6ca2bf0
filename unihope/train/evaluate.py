"""Evaluation: score a model on a dataset per sample (hand, mesh, 2D, switcher, object) and aggregate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from unihope import metrics as M
from unihope.model import UniHOPEModel
from unihope.storage.loader import make_loader
from unihope.train.batch import PreparedBatch, prepare_batch, with_gt_vertices
from unihope.train.stats import TrainStatistics
from unihope.train_config import TrainConfig

GRASP_THRESHOLD = 0.5


@dataclass(frozen=True)
class EvalReport:
    """Per-sample evaluation results (N samples)."""

    mpjpe_mm: np.ndarray  # (N,)
    pa_mpjpe_mm: np.ndarray  # (N,)
    mpvpe_mm: np.ndarray  # (N,)
    mean_pose_mpjpe_mm: np.ndarray  # (N,) the training mean pose as prediction
    joints_2d_error_px: np.ndarray  # (N,) mean 2D joint error in crop px (heatmap soft-argmax)
    per_joint_error_mm: np.ndarray  # (N, 21)
    grasp_label: np.ndarray  # (N,) int
    grasp_prob: np.ndarray  # (N,)
    visibility: np.ndarray  # (N,)
    add_s_mm: np.ndarray  # (N,) nan where not evaluated (not grasping, unknown object, PnP failure)
    object_keypoints_error_px: np.ndarray  # (N,) nan where not grasping
    sample_keys: list[str]
    # UniHOPE's eval.py: vertex F-scores (wrist-aligned and Procrustes-aligned) and PA per-joint errors
    f_score: dict[str, np.ndarray] = field(default_factory=dict)  # "f_score_5mm", "pa_f_score_15mm", ... -> (N,)
    pa_per_joint_error_mm: np.ndarray | None = None  # (N, 21)

    def summary(self, stats: TrainStatistics) -> dict:
        """Aggregate numbers: overall, hand-only / hand-object split, occlusion-interval table."""
        pred_grasp = (self.grasp_prob > GRASP_THRESHOLD).astype(np.int64)
        majority = np.full_like(self.grasp_label, stats.majority_grasp)

        def mean(values: np.ndarray) -> float:
            values = values[np.isfinite(values)]
            return float(values.mean()) if len(values) else float("nan")

        split = {}
        for name, label in (("hand_only", 0), ("hand_object", 1)):
            chosen = self.grasp_label == label
            split[name] = {
                "count": int(chosen.sum()),
                "mpjpe_mm": mean(self.mpjpe_mm[chosen]),
                "pa_mpjpe_mm": mean(self.pa_mpjpe_mm[chosen]),
                "mpvpe_mm": mean(self.mpvpe_mm[chosen]),
                "mean_pose_mpjpe_mm": mean(self.mean_pose_mpjpe_mm[chosen]),
            }
        return {
            "num_samples": int(len(self.mpjpe_mm)),
            "mpjpe_mm": mean(self.mpjpe_mm),
            "pa_mpjpe_mm": mean(self.pa_mpjpe_mm),
            "mpvpe_mm": mean(self.mpvpe_mm),
            "joints_2d_error_px": mean(self.joints_2d_error_px),
            "mean_pose_mpjpe_mm": mean(self.mean_pose_mpjpe_mm),
            "switcher_accuracy": M.switcher_accuracy(pred_grasp, self.grasp_label),
            "majority_switcher_accuracy": M.switcher_accuracy(majority, self.grasp_label),
            "add_s_mm": mean(self.add_s_mm),
            "add_s_num_evaluated": int(np.isfinite(self.add_s_mm).sum()),
            "object_keypoints_error_px": mean(self.object_keypoints_error_px),
            **{name: mean(values) for name, values in self.f_score.items()},
            "auc_joints_0_50mm": M.pck_auc(self.per_joint_error_mm) if len(self.per_joint_error_mm) else float("nan"),
            "pa_auc_joints_0_50mm": (M.pck_auc(self.pa_per_joint_error_mm)
                                     if self.pa_per_joint_error_mm is not None and len(self.pa_per_joint_error_mm)
                                     else float("nan")),
            "split_by_grasp": split,
            "occlusion_intervals": {
                "mpjpe_mm": M.occlusion_interval_table(self.mpjpe_mm, self.visibility),
                "pa_mpjpe_mm": M.occlusion_interval_table(self.pa_mpjpe_mm, self.visibility),
                "mean_pose_mpjpe_mm": M.occlusion_interval_table(self.mean_pose_mpjpe_mm, self.visibility),
            },
        }


def evaluate(
    model: UniHOPEModel, dataset: torch.utils.data.Dataset, cfg: TrainConfig, stats: TrainStatistics,
    device: torch.device | None = None,
) -> EvalReport:
    """Run the model over `dataset` (no masking, no mirroring of the evaluation itself) and score every sample.

    Raises:
        ValueError: on an empty dataset.
    """
    # 1. Check inputs
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty (check data.eval_split)")
    device = device or next(model.parameters()).device
    model.eval()
    rows: dict[str, list] = {k: [] for k in (
        "mpjpe", "pa", "mpvpe", "mean", "j2d", "per_joint", "pa_per_joint", "label", "prob", "vis", "adds", "kp",
        "keys")}  # fmt: skip
    f_rows: dict[str, list[np.ndarray]] = {}

    # 2. Predict and score batch by batch
    with torch.no_grad():
        for batch in make_loader(dataset, cfg.eval_batch_size, cfg.data.num_workers, shuffle=False):
            prepared = with_gt_vertices(model, prepare_batch(batch, cfg, device, is_train=False))
            t = prepared.targets
            out = model(prepared.images, t.hand_boxes_xyxy_px, t.object_boxes_xyxy_px)
            pred_j, gt_j = out.joints_rel_m.double().cpu().numpy(), t.joints_rel_m.double().cpu().numpy()
            rows["mpjpe"].append(M.mpjpe_mm(pred_j, gt_j))
            rows["pa"].append(M.pa_mpjpe_mm(pred_j, gt_j))
            rows["mpvpe"].append(M.mpvpe_mm(out.verts_rel_m.double().cpu().numpy(), t.verts_rel_m.double().cpu().numpy()))
            rows["mean"].append(M.mpjpe_mm(np.broadcast_to(stats.mean_joints_rel_m, gt_j.shape), gt_j))
            rows["per_joint"].append(np.linalg.norm(pred_j - gt_j, axis=-1) * M.M_TO_MM)
            rows["pa_per_joint"].append(np.linalg.norm(M.procrustes_align(pred_j, gt_j) - gt_j, axis=-1) * M.M_TO_MM)
            for name, values in _vertex_f_scores(out.verts_rel_m, t.verts_rel_m).items():
                f_rows.setdefault(name, []).append(values)
            ratio = prepared.crop_size_px / cfg.model.input_size_px
            j2d = (out.joints_2d_px - t.joints_2d_px).norm(dim=-1).mean(-1) * ratio
            rows["j2d"].append(j2d.double().cpu().numpy())
            rows["label"].append(t.grasp.cpu().numpy())
            rows["prob"].append(out.grasp_prob.double().cpu().numpy())
            rows["vis"].append(prepared.visibility)
            rows["keys"].extend(prepared.sample_keys)
            adds, kp_err = _score_objects(out.object_keypoints_2d_px.double().cpu().numpy(), prepared, batch, stats, cfg)
            rows["adds"].append(adds)
            rows["kp"].append(kp_err)
    cat = {k: (np.concatenate(v) if k != "keys" else v) for k, v in rows.items()}
    return EvalReport(
        mpjpe_mm=cat["mpjpe"], pa_mpjpe_mm=cat["pa"], mpvpe_mm=cat["mpvpe"], mean_pose_mpjpe_mm=cat["mean"],
        joints_2d_error_px=cat["j2d"], per_joint_error_mm=cat["per_joint"], grasp_label=cat["label"],
        grasp_prob=cat["prob"], visibility=cat["vis"], add_s_mm=cat["adds"], object_keypoints_error_px=cat["kp"],
        sample_keys=cat["keys"], f_score={name: np.concatenate(v) for name, v in f_rows.items()},
        pa_per_joint_error_mm=cat["pa_per_joint"],
    )  # fmt: skip


def _vertex_f_scores(pred_verts_rel_m: torch.Tensor, gt_verts_rel_m: torch.Tensor) -> dict[str, np.ndarray]:
    """UniHOPE's eval.py F-scores of the mesh vertices at 5 and 15 mm: wrist-aligned (both meshes are
    wrist-relative) and after a Procrustes fit of the vertices with scale ("pa_")."""
    pred, gt = pred_verts_rel_m.double().cpu().numpy(), gt_verts_rel_m.double().cpu().numpy()
    aligned = M.procrustes_align(pred, gt)
    scores = {}
    for threshold_mm in M.F_SCORE_THRESHOLDS_MM:
        scores[f"f_score_{threshold_mm:g}mm"] = M.f_score(pred, gt, threshold_mm)
        scores[f"pa_f_score_{threshold_mm:g}mm"] = M.f_score(aligned, gt, threshold_mm)
    return scores


def _score_objects(pred_kp_input_px: np.ndarray, prepared: PreparedBatch, batch: dict, stats: TrainStatistics,
                   cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """ADD-S (mm) over the triangulated box keypoints and 2D keypoint error (crop px), grasping samples only."""
    ratio = cfg.model.input_size_px / prepared.crop_size_px
    crop = prepared.crop_size_px
    pred = (pred_kp_input_px + 0.5) / ratio - 0.5  # back to crop px
    mirrored = prepared.is_mirrored.numpy()
    pred[mirrored, :, 0] = crop - 1 - pred[mirrored, :, 0]  # back to the sample's own (unmirrored) crop
    gt = np.asarray(batch["object_keypoints_2d"], dtype=np.float64)
    labels = np.asarray(batch["grasp"]).reshape(-1)
    adds = np.full(len(pred), np.nan)
    kp_err = np.full(len(pred), np.nan)
    for i in range(len(pred)):
        if labels[i] != 1:
            continue
        kp_err[i] = float(np.linalg.norm(pred[i] - gt[i], axis=-1).mean())
        points = stats.object_keypoints_obj_m.get(int(prepared.object_id[i]))
        if points is None:
            continue
        pose = M.solve_object_pose_pnp(pred[i], points, prepared.K_crop[i])
        if pose is not None:
            adds[i] = M.add_s_mm(points, pose, prepared.object_pose[i])
    return adds, kp_err


def json_safe(value):
    """`value` with non-finite floats as None (JSON has no NaN), for metrics files."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
