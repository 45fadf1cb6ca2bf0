"""Benchmark: the trained de-occluder, beta and the search cost, against the true object-free render.

    python bench/deoccluder_truth.py --trained runs/deocc_tiny          # a `unihope train-deoccluder` folder
    python bench/deoccluder_truth.py --trained runs/deocc_tiny --pose-checkpoint runs/demo_train  # + keypoints

Frames: the held-out sequences of the folder's training data (training.json names them; never trained on),
occluded ones only (visibility <= deocclusion.max_visibility, some hand hidden), cut by the build's stages.
Truth: the synthetic source's object-free render of the same view, cut with the same crop affine.

Quality of a de-occluded crop, against the truth: PSNR and SSIM in the hidden-hand region (mask_hand &
~mask_hand_visible); with --pose-checkpoint, the 2-D (px) and 3-D (mm, wrist-relative) error between the pose
model's hand on the crop and its hand on the truth crop.

Arms: (a) every fixed beta of the grid (deocclusion.beta_candidates, and 0 = the trained UNet without control),
(b) adaptive: UniHOPE's rule through our scorer (`search`: the scorer's best of the candidates; a frame's
noise depends only on its key, so the candidates are the fixed-beta images and are scored from them), and the
`occlusion_prior` policy, (c) oracle: per image the grid beta with the best PSNR against the
truth, (d) the weight-free `render` composite, (e) the untrained floor (the folder's checkpoints/step-0).
Means with 95% bootstrap intervals over images, per occlusion bin; how often adaptive picks the oracle's
beta; its paired gap to the best fixed beta. Then the search-cost table: UNet evaluations per frame against
quality for the full search, early exit, DPM-Solver++ and cheaper settings, and a plot (--plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from unihope.config import DeocclusionConfig, PipelineConfig  # noqa: E402
from unihope.deocclude import build_deoccluder  # noqa: E402
from unihope.deocclude.hints import inpaint_mask, occluded_hand_mask  # noqa: E402
from unihope.deocclude.quality import psnr_in_mask, ssim_in_mask  # noqa: E402
from unihope.overrides import apply_overrides  # noqa: E402
from unihope.train.deoccluder import build_overrides, load_deoccluder_config  # noqa: E402
from unihope.train.deoccluder_config import DeoccluderTrainConfig  # noqa: E402
from unihope.train.deoccluder_data import (  # noqa: E402
    dataset_version, heldout_sequences, is_trainable, sequence_of, synthetic_frames, truth_crop,
)

BINS = ((0.0, 0.5), (0.5, 0.75), (0.75, 0.9))  # visibility bins (occlusion: severe, medium, slight)
NO_CONTROL = 0.0  # beta 0: the trained UNet alone (what the ControlNet adds is the gap to it)
BOOTSTRAP = 2000


@dataclass
class Arm:
    name: str
    images: list[np.ndarray]
    unet_evals: float = 0.0
    betas: np.ndarray | None = None
    seconds: float = 0.0


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% bootstrap interval over images."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fmt(ci: tuple[float, float, float], digits: int = 2) -> str:
    mean, low, high = ci
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def run_arm(name: str, cfg: DeocclusionConfig, frames) -> Arm:  # noqa: ANN001
    start = time.perf_counter()
    results = build_deoccluder(cfg).run(frames)
    return Arm(name=name, images=[r.image_deoccluded for r in results],
               unet_evals=float(np.mean([r.num_unet_evals for r in results])),
               betas=np.array([r.beta for r in results]), seconds=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained", type=Path, required=True,
                        help="a `unihope train-deoccluder` output folder, or one of its checkpoints/step-N (with --config)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the training config, for a folder without training.json (a run's checkpoint)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="--set key=value of --config")
    parser.add_argument("--pose-checkpoint", type=Path, default=None, help="a `unihope train` run or checkpoint")
    parser.add_argument("--max-frames", type=int, default=60)
    parser.add_argument("--max-sequences", type=int, default=None, help="measure on the first N held-out sequences only")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the full search (HandRefiner: 50)")
    parser.add_argument("--preview-step", type=int, default=10, help="early exit after this many DDIM steps")
    parser.add_argument("--plot", type=Path, default=None, help="write the cost-vs-quality plot (PNG) here")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # 1. Held-out occluded frames and their truth
    if (args.trained / "training.json").is_file():
        record = json.loads((args.trained / "training.json").read_text())
        train_cfg = DeoccluderTrainConfig.model_validate(record["config"])
        root = train_cfg.data.root or args.trained / "_synthetic"
        floor_dir = args.trained / "checkpoints" / "step-0"
    else:  # a checkpoint of a run: the config from --config, the floor beside it
        train_cfg = load_deoccluder_config(args.config, tuple(args.overrides))
        root = Path(train_cfg.data.root or args.trained.parent.parent / "_synthetic")
        record = {"dataset_version": dataset_version(train_cfg.data.synthetic, train_cfg.data.crop),
                  "num_train_pairs": float("nan"), "wall_s": float("nan"),
                  "heldout_sequences": heldout_sequences(root, train_cfg.data.synthetic, train_cfg.data.heldout_sequences)}
        floor_dir = args.trained.parent / "step-0"
    heldout = set(sorted(record["heldout_sequences"])[: args.max_sequences])
    frames = synthetic_frames(Path(root), train_cfg.data.synthetic, train_cfg.data.crop, sequences=heldout)
    max_vis = train_cfg.deocclusion.max_visibility
    frames = [f for f in frames if sequence_of(f) in heldout and is_trainable(f) and f.visibility <= max_vis]
    frames = frames[: args.max_frames]
    truths = [truth_crop(Path(root), f) for f in frames]
    hidden = [occluded_hand_mask(f) for f in frames]
    visibility = np.array([f.visibility for f in frames])
    print(f"{len(frames)} held-out occluded crops from {sorted(heldout)} (data {record['dataset_version']}); "
          f"model {args.trained}")

    base = apply_overrides(PipelineConfig(), build_overrides(args.trained, train_cfg)).deocclusion
    floor = apply_overrides(PipelineConfig(), build_overrides(floor_dir, train_cfg)).deocclusion

    def with_net(cfg: DeocclusionConfig, **net) -> DeocclusionConfig:
        return cfg.model_copy(update={"controlnet": cfg.controlnet.model_copy(update=net)})

    # 2. Arms. The grid is beta 0 plus the search's candidates; every frame's noise depends only on its key, so
    # the fixed-beta images are the search's candidates and adaptive is scored from them (no extra UNet cost).
    ddim = with_net(base, num_inference_steps=args.steps, scheduler="ddim")
    candidates = tuple(float(b) for b in base.beta_candidates)
    grid = (NO_CONTROL,) + tuple(b for b in candidates if b != NO_CONTROL)
    arms: dict[str, Arm] = {}
    for beta in grid:
        arms[f"fixed {beta:g}"] = run_arm(f"fixed {beta:g}", ddim.model_copy(update={"beta_policy": "fixed",
                                                                                        "beta_fixed": beta}), frames)
    deoccluder = build_deoccluder(ddim)
    chosen, chosen_beta = [], []
    for idx, frame in enumerate(frames):
        mask = inpaint_mask(frame, ddim.mask_dilation_px, ddim.mask_region)
        images = np.stack([arms[f"fixed {b:g}"].images[idx] for b in candidates])
        best = int(np.argmax(deoccluder.scorer.score(frame, mask, images)))  # first of ties, as the search
        chosen.append(images[best])
        chosen_beta.append(candidates[best])
    arms["adaptive (search, colour scorer)"] = Arm(
        "adaptive", chosen, unet_evals=sum(arms[f"fixed {b:g}"].unet_evals for b in candidates),
        betas=np.array(chosen_beta), seconds=sum(arms[f"fixed {b:g}"].seconds for b in candidates))
    arms["occlusion_prior"] = run_arm("occlusion_prior", ddim.model_copy(update={"beta_policy": "occlusion_prior"}), frames)
    arms["render (weight-free)"] = run_arm("render", DeocclusionConfig(backend="render"), frames)
    arms["untrained floor (step 0)"] = run_arm("floor", with_net(floor, num_inference_steps=args.steps,
                                                                  scheduler="ddim").model_copy(
        update={"beta_policy": "fixed", "beta_fixed": 1.0}), frames)
    arms["input (occluded)"] = Arm("input", [f.image for f in frames])

    # 3. Quality against the truth
    pose = None
    if args.pose_checkpoint is not None:
        from unihope.deocclude.pose_scorer import CheckpointPoseModel

        pose = CheckpointPoseModel.from_checkpoint(args.pose_checkpoint)
        on_truth = [pose.predict(f, t[None]) for f, t in zip(frames, truths)]

    def quality(arm: Arm) -> dict[str, np.ndarray]:
        q = {"psnr": np.array([psnr_in_mask(i, t, m) for i, t, m in zip(arm.images, truths, hidden)]),
             "ssim": np.array([ssim_in_mask(i, t, m) for i, t, m in zip(arm.images, truths, hidden)])}
        if pose is not None:
            preds = [pose.predict(f, i[None]) for f, i in zip(frames, arm.images)]
            q["kp2d_px"] = np.array([np.linalg.norm(p.joints_2d_px[0] - t.joints_2d_px[0], axis=-1).mean()
                                     for p, t in zip(preds, on_truth)])
            q["kp3d_mm"] = np.array([1000 * np.linalg.norm(p.joints_rel_m[0] - t.joints_rel_m[0], axis=-1).mean()
                                     for p, t in zip(preds, on_truth)])
        return q

    scores = {name: quality(arm) for name, arm in arms.items()}
    fixed_names = [f"fixed {b:g}" for b in grid]
    psnr_grid = np.stack([scores[n]["psnr"] for n in fixed_names], axis=1)  # (N, len(GRID))
    oracle_idx = np.argmax(psnr_grid, axis=1)
    oracle = {key: np.stack([scores[n][key] for n in fixed_names], axis=1)[np.arange(len(frames)), oracle_idx]
              for key in scores[fixed_names[0]]}
    scores["oracle (best grid beta per image)"] = oracle
    oracle_beta = np.array(grid)[oracle_idx]
    cand_idx = [grid.index(b) for b in candidates]  # the oracle among the rule's own candidates: a perfect scorer
    metrics = list(scores["fixed 0"].keys())

    # 4. Tables
    out: dict = {"frames": len(frames), "record": {k: record[k] for k in ("dataset_version", "wall_s", "num_train_pairs")}}
    print("\n## Quality against the truth (hidden-hand region; mean [95% CI] over images)\n")
    header = "| arm | UNet evals / frame | " + " | ".join(metrics) + " |"
    print(header)
    print("|" + "---|" * (len(metrics) + 2))
    out["arms"] = {}
    for name, q in scores.items():
        evals = arms[name].unet_evals if name in arms else float("nan")
        cells = [fmt(bootstrap_ci(q[m]), 3 if m == "ssim" else 2) for m in metrics]
        print(f"| {name} | {evals:.0f} | " + " | ".join(cells) + " |")
        out["arms"][name] = {m: bootstrap_ci(q[m]) for m in metrics} | {"unet_evals": evals}

    adaptive_beta = arms["adaptive (search, colour scorer)"].betas
    best_fixed = fixed_names[int(np.nanargmax([np.nanmean(scores[n]["psnr"]) for n in fixed_names]))]
    gap = scores["adaptive (search, colour scorer)"]["psnr"] - scores[best_fixed]["psnr"]
    cand_oracle = np.array(grid)[np.array(cand_idx)[np.argmax(psnr_grid[:, cand_idx], axis=1)]]
    print(f"\nadaptive picks the oracle's beta (over the grid) in {np.mean(np.isclose(adaptive_beta, oracle_beta)):.0%} "
          f"of images; the best of its own candidates {tuple(candidates)} in "
          f"{np.mean(np.isclose(adaptive_beta, cand_oracle)):.0%} (chance {1 / len(candidates):.0%})")
    print(f"best fixed beta (mean PSNR): {best_fixed}; adaptive - best fixed: {fmt(bootstrap_ci(gap))} dB")
    out["adaptive_picks_oracle"] = float(np.mean(np.isclose(adaptive_beta, oracle_beta)))
    out["adaptive_picks_candidate_oracle"] = float(np.mean(np.isclose(adaptive_beta, cand_oracle)))
    out["best_fixed"] = best_fixed
    out["adaptive_minus_best_fixed_db"] = bootstrap_ci(gap)

    print("\n## Per occlusion bin (PSNR dB, mean [95% CI])\n")
    bin_arms = [best_fixed, "adaptive (search, colour scorer)", "occlusion_prior", "oracle (best grid beta per image)",
                "render (weight-free)", "untrained floor (step 0)", "fixed 0"]
    bin_arms = list(dict.fromkeys(bin_arms))  # the best fixed beta may be 0
    print("| visibility | frames | " + " | ".join(bin_arms) + " | adaptive = oracle | oracle betas |")
    print("|" + "---|" * (len(bin_arms) + 4))
    out["bins"] = {}
    for low, high in BINS:
        sel = (visibility > low) & (visibility <= high) if low > 0 else visibility <= high
        if not sel.any():
            continue
        cells = [fmt(bootstrap_ci(scores[n]["psnr"][sel])) for n in bin_arms]
        hits = np.mean(np.isclose(adaptive_beta[sel], oracle_beta[sel]))
        betas = ", ".join(f"{b:g}: {int(np.sum(oracle_beta[sel] == b))}" for b in grid if np.any(oracle_beta[sel] == b))
        print(f"| ({low}, {high}] | {int(sel.sum())} | " + " | ".join(cells) + f" | {hits:.0%} | {betas} |")
        out["bins"][f"{low}-{high}"] = {n: bootstrap_ci(scores[n]["psnr"][sel]) for n in bin_arms}

    # 5. The search cost at equal quality
    full_beta = adaptive_beta
    settings = [
        (f"full search, DDIM {args.steps} ({len(candidates)} cand.)", None),
        (f"early exit k={args.preview_step}, DDIM {args.steps}", with_net(ddim, preview_step=args.preview_step, finish_top=1).model_copy(update={"beta_policy": "search"})),
        ("full search, DPM-Solver++ 20", with_net(base, num_inference_steps=20, scheduler="dpmsolver++").model_copy(update={"beta_policy": "search"})),
        ("early exit k=4, DPM-Solver++ 20", with_net(base, num_inference_steps=20, scheduler="dpmsolver++", preview_step=4).model_copy(update={"beta_policy": "search"})),
        ("3 cand., early exit k=2, DPM++ 10", with_net(base, num_inference_steps=10, scheduler="dpmsolver++", preview_step=2).model_copy(update={"beta_policy": "search", "beta_candidates": (0.4, 0.7, 1.0)})),
        ("occlusion_prior, DPM-Solver++ 20", with_net(base, num_inference_steps=20, scheduler="dpmsolver++").model_copy(update={"beta_policy": "occlusion_prior"})),
        (f"{best_fixed}, DPM-Solver++ 10", with_net(base, num_inference_steps=10, scheduler="dpmsolver++").model_copy(update={"beta_policy": "fixed", "beta_fixed": float(best_fixed.split()[1])})),
        (f"{best_fixed}, DPM-Solver++ 5", with_net(base, num_inference_steps=5, scheduler="dpmsolver++").model_copy(update={"beta_policy": "fixed", "beta_fixed": float(best_fixed.split()[1])})),
    ]
    print("\n## Search cost (UNet evaluations per generated frame, no guidance: x2 with guidance) vs quality\n")
    print("| setting | UNet evals / frame | vs full | PSNR dB | SSIM | same beta as full | wall s / frame |" +
          (" 2-D kp px | 3-D kp mm |" if pose is not None else ""))
    print("|" + "---|" * (7 + (2 if pose is not None else 0)))
    out["cost"] = []
    full_evals = None
    for name, cfg in settings:
        arm = arms["adaptive (search, colour scorer)"] if cfg is None else run_arm(name, cfg, frames)
        q = scores["adaptive (search, colour scorer)"] if cfg is None else quality(arm)
        full_evals = full_evals or arm.unet_evals
        same = np.mean(np.isclose(arm.betas, full_beta)) if cfg is None or cfg.beta_policy != "fixed" else float("nan")
        row = {"setting": name, "unet_evals": arm.unet_evals, "psnr": bootstrap_ci(q["psnr"]),
               "ssim": bootstrap_ci(q["ssim"]), "same_beta": same, "s_per_frame": arm.seconds / len(frames)}
        extra = ""
        if pose is not None:
            row["kp2d_px"], row["kp3d_mm"] = bootstrap_ci(q["kp2d_px"]), bootstrap_ci(q["kp3d_mm"])
            extra = f" {fmt(row['kp2d_px'])} | {fmt(row['kp3d_mm'])} |"
        print(f"| {name} | {arm.unet_evals:.0f} | {arm.unet_evals / full_evals:.2f}x | {fmt(row['psnr'])} | "
              f"{fmt(row['ssim'], 3)} | {'-' if np.isnan(same) else f'{same:.0%}'} | {row['s_per_frame']:.2f} |" + extra)
        out["cost"].append(row)

    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for row in out["cost"]:
            mean, low, high = row["psnr"]
            ax.errorbar(row["unet_evals"], mean, yerr=[[mean - low], [high - mean]], fmt="o", capsize=3)
            ax.annotate(row["setting"], (row["unet_evals"], mean), fontsize=6, xytext=(4, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("UNet evaluations per frame (no guidance)")
        ax.set_ylabel("PSNR in the hidden hand vs truth (dB)")
        ax.set_title(f"tiny trained de-occluder, {len(frames)} held-out crops")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
