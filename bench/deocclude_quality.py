"""Benchmark: de-occlusion quality on the synthetic DexYCB-layout dataset, against its true object-free images.

    python bench/deocclude_quality.py                          # 4 sequences x 24 frames x 2 cameras
    python bench/deocclude_quality.py --root /data/synth_dexycb  # reuse (or write) a dataset there
    python bench/deocclude_quality.py --skip-controlnet

Pipeline as the build runs it: synthetic source -> grasp labels -> `annotate_frames` (128 px crops) ->
de-occluders. Truth (only a benchmark may read it): `<root>/truth/<subject>/<sequence>/<serial>/color_%06d.jpg`,
the same view rendered without the grasped object, cut with each frame's `crop.affine` exactly as the crop
was cut. Measured on every occluded frame (visibility <= deocclusion.max_visibility):

- PSNR and SSIM inside the occluded hand region (mask_hand & ~mask_hand_visible) and inside the whole inpaint
  mask, against the truth crop; the occluded input itself is listed as the floor;
- keep rate under UniHOPE's filter, and the mean PSNR gain (occluded region, vs the input) of the kept and of
  the dropped frames: a useful filter keeps the frames that gained most.

Backends: `render`, `inpaint` (OpenCV baseline) and `controlnet` with the tiny random test models of
tests/tiny_diffusion.py (2 steps, 64 px) -- mechanics only: random weights cannot de-occlude anything.
Ratios are against `inpaint`, run in the same process on the same frames.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from unihope.storage.schema import AnnotatedFrame, Skip  # noqa: E402
from unihope.config import (  # noqa: E402
    ControlNetConfig,
    CropConfig,
    DeocclusionConfig,
    GraspConfig,
    HandModelConfig,
    RenderConfig,
    SourceConfig,
    SyntheticConfig,
)
from unihope.deocclude import build_deoccluder  # noqa: E402
from unihope.deocclude.hints import occluded_hand_mask  # noqa: E402
from unihope.deocclude.quality import psnr_in_mask, ssim_in_mask  # noqa: E402
from unihope.train.deoccluder_data import truth_crop  # noqa: E402



def annotated_synthetic_frames(root: Path, synth_cfg: SyntheticConfig) -> list[AnnotatedFrame]:
    """Write (or reuse) the synthetic dataset at root and annotate every frame as the build does."""
    from unihope.grasp import label_grasps
    from unihope.render.annotate import AnnotationResources, annotate_frames
    from unihope.sources import open_source
    from unihope.sources.synthetic import write_synthetic_dataset

    hand_cfg = HandModelConfig()
    write_synthetic_dataset(root, synth_cfg, hand_cfg)
    source = open_source(SourceConfig(kind="dexycb", root=root), hand_cfg)
    frames = [f for f in source.load(source.index()) if not isinstance(f, Skip)]
    annotated = annotate_frames(frames, label_grasps(frames, GraspConfig()), CropConfig(), RenderConfig(), hand_cfg,
                                resources=AnnotationResources())
    return [a for a in annotated if isinstance(a, AnnotatedFrame)]


def evaluate(name: str, images: list[np.ndarray], frames, truths, masks) -> dict[str, float]:
    occluded = [occluded_hand_mask(f) for f in frames]
    return {
        "backend": name,
        "psnr_occ_db": float(np.mean([psnr_in_mask(i, t, m) for i, t, m in zip(images, truths, occluded)])),
        "ssim_occ": float(np.mean([ssim_in_mask(i, t, m) for i, t, m in zip(images, truths, occluded)])),
        "psnr_mask_db": float(np.mean([psnr_in_mask(i, t, m) for i, t, m in zip(images, truths, masks)])),
        "ssim_mask": float(np.mean([ssim_in_mask(i, t, m) for i, t, m in zip(images, truths, masks)])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="synthetic dataset folder (default: a temp dir)")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--skip-controlnet", action="store_true")
    parser.add_argument("--save-grid", type=Path, default=None, help="write a PNG contact sheet of the results")
    args = parser.parse_args()

    # 1. Data: annotated crops of the synthetic dataset, and their truth crops
    temp = tempfile.TemporaryDirectory() if args.root is None else None
    root = args.root or Path(temp.name) / "synthetic_dexycb"
    synth_cfg = SyntheticConfig(
        format="dexycb", num_sequences=args.sequences, frames_per_sequence=args.frames, num_cameras=args.cameras, seed=0
    )
    start = time.perf_counter()
    annotated = annotated_synthetic_frames(root, synth_cfg)
    base_cfg = DeocclusionConfig()
    frames = [a for a in annotated if a.visibility <= base_cfg.max_visibility and occluded_hand_mask(a).sum() > 0]
    truths = [truth_crop(root, f) for f in frames]
    print(f"dataset: {len(annotated)} annotated crops, {len(frames)} occluded (visibility <= {base_cfg.max_visibility}); "
          f"mean visibility {np.mean([f.visibility for f in frames]):.3f}; prepared in {time.perf_counter() - start:.1f} s")

    # 2. Backends
    configs = {"render": base_cfg, "inpaint": base_cfg.model_copy(update={"backend": "inpaint"})}
    if not args.skip_controlnet:
        import torch

        from tests.tiny_diffusion import save_tiny_models

        torch.set_num_threads(1)
        models_dir = Path(tempfile.mkdtemp(prefix="tiny_sd_"))
        paths = save_tiny_models(models_dir)
        configs["controlnet (tiny, random)"] = base_cfg.model_copy(
            update={
                "backend": "controlnet",
                "controlnet": ControlNetConfig(
                    base_model=str(paths["base_model"]),
                    controlnet_depth=str(paths["controlnet_depth"]),
                    num_inference_steps=2,
                    working_size_px=64,
                    device="cpu",
                ),
            }
        )
    rows, all_results = [], {}
    input_masks = None
    for name, cfg in configs.items():
        deoccluder = build_deoccluder(cfg)
        start = time.perf_counter()
        results = deoccluder.run(frames)
        elapsed = time.perf_counter() - start
        all_results[name] = results
        masks = [r.inpaint_mask for r in results]
        input_masks = input_masks or masks
        row = evaluate(name, [r.image_deoccluded for r in results], frames, truths, masks)
        kept = np.array([r.keep for r in results])
        gain_db = np.array([
            psnr_in_mask(r.image_deoccluded, t, occluded_hand_mask(f)) - psnr_in_mask(f.image, t, occluded_hand_mask(f))
            for r, f, t in zip(results, frames, truths)
        ])
        row.update(
            keep_rate=float(kept.mean()),
            gain_kept_db=float(gain_db[kept].mean()) if kept.any() else float("nan"),
            gain_dropped_db=float(gain_db[~kept].mean()) if (~kept).any() else float("nan"),
            frames_per_s=len(frames) / elapsed,
        )
        rows.append(row)
    rows.insert(0, evaluate("(occluded input)", [f.image for f in frames], frames, truths, input_masks) | {
        "keep_rate": float("nan"), "gain_kept_db": float("nan"), "gain_dropped_db": float("nan"),
        "frames_per_s": float("nan")})

    # 3. Report
    header = (f"{'backend':28s} {'PSNR occ dB':>11s} {'SSIM occ':>9s} {'PSNR mask dB':>12s} {'SSIM mask':>9s} "
              f"{'keep':>6s} {'gain kept':>9s} {'gain drop':>9s} {'frames/s':>9s}")
    print(header)
    for row in rows:
        print(f"{row['backend']:28s} {row['psnr_occ_db']:11.2f} {row['ssim_occ']:9.3f} {row['psnr_mask_db']:12.2f} "
              f"{row['ssim_mask']:9.3f} {row['keep_rate']:6.2f} {row['gain_kept_db']:9.2f} {row['gain_dropped_db']:9.2f} "
              f"{row['frames_per_s']:9.1f}")
    by_name = {row["backend"]: row for row in rows}
    render, inpaint = by_name["render"], by_name["inpaint"]
    print(f"render vs inpaint (occluded region): +{render['psnr_occ_db'] - inpaint['psnr_occ_db']:.2f} dB PSNR "
          f"(MSE x{10 ** ((inpaint['psnr_occ_db'] - render['psnr_occ_db']) / 10):.2f}), "
          f"SSIM {render['ssim_occ']:.3f} vs {inpaint['ssim_occ']:.3f}")

    if args.save_grid is not None:
        rows_img = []
        for idx in np.linspace(0, len(frames) - 1, min(8, len(frames))).astype(int):
            tiles = [frames[idx].image] + [all_results[n][idx].image_deoccluded for n in configs] + [truths[idx]]
            rows_img.append(np.hstack(tiles))
        cv2.imwrite(str(args.save_grid), cv2.cvtColor(np.vstack(rows_img), cv2.COLOR_RGB2BGR))
        print(f"contact sheet (input | {' | '.join(configs)} | truth): {args.save_grid}")
    if temp is not None:
        temp.cleanup()


if __name__ == "__main__":
    main()
