"""Benchmark: how close each ablation arm's second images are to the truth, in the hidden hand.

    python bench/pair_fidelity.py --data /tmp/ablate/data --pairs-from controlnet=/tmp/ablate/controlnet

For the pair ablation's build (`bench/ablate_pairs.py --data`) and any other build of the same frames
(`--pairs-from NAME=DIR`, e.g. a build with a trained ControlNet): per arm, over every paired sample, PSNR
and SSIM of the second image against the synthetic source's true object-free crop in the hidden hand
(`mask_hand & ~mask_hand_visible`, at least MIN_HIDDEN_PX pixels), mean with a 95 % bootstrap interval
over samples, and the occluded input as the floor. It says what each arm of the ablation trains on; the
oracle arm is the truth itself (infinite PSNR) and is not listed. Reads `truth/` (a benchmark may).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.ablate_pairs import SYNTHETIC_DIR, resolve_arms, second_images  # noqa: E402
from bench.deoccluder_truth import bootstrap_ci, fmt  # noqa: E402

MIN_HIDDEN_PX = 20  # fewer hidden-hand pixels make PSNR a statement about a handful of pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the ablation build (bench/ablate_pairs.py --data)")
    parser.add_argument("--out", type=Path, default=None, help="where the arms' second images are cached")
    parser.add_argument("--arms", default="render,shuffled")
    parser.add_argument("--pairs-from", action="append", default=[], metavar="NAME=DIR")
    args = parser.parse_args()

    from unihope.deocclude.quality import psnr_in_mask, ssim_in_mask
    from unihope.storage.view import open_dataset
    from unihope.train.deoccluder_data import truth_crop_of_key

    registry, arms = resolve_arms(args.arms, args.pairs_from)
    out = args.out or args.data.parent / "fidelity"
    out.mkdir(parents=True, exist_ok=True)

    view = open_dataset(str(args.data))
    try:
        keys = [str(k) for k in view.column("sample_key")]
        affines, keep = view.column("crop_affine"), view.column("keep").astype(bool)
        rows: dict[str, list[tuple[float, float]]] = {"input (occluded)": []}
        by_arm = {arm: (second_images(args.data, out, registry[arm]) if registry[arm].second_image != "stored"
                        else None) for arm in arms}  # fmt: skip
        for arm in arms:
            rows[arm] = []
        for i in np.flatnonzero(keep):
            sample = view.sample(int(i), ("image", "image_deoccluded", "mask_hand", "mask_hand_visible"))
            hidden = sample["mask_hand"] & ~sample["mask_hand_visible"]
            if hidden.sum() < MIN_HIDDEN_PX:
                continue
            truth = truth_crop_of_key(args.data / SYNTHETIC_DIR, keys[i], affines[i], sample["image"].shape[0])
            rows["input (occluded)"].append((psnr_in_mask(sample["image"], truth, hidden),
                                             ssim_in_mask(sample["image"], truth, hidden)))
            for arm in arms:
                images = by_arm[arm]
                image = sample["image_deoccluded"] if images is None else images.get(keys[i])
                if image is not None:
                    rows[arm].append((psnr_in_mask(image, truth, hidden), ssim_in_mask(image, truth, hidden)))
    finally:
        view.close()

    print(f"Second images against the truth in the hidden hand (>= {MIN_HIDDEN_PX} px), paired samples of "
          f"{args.data}; mean [95 % bootstrap interval]\n")
    print("| second image | samples | PSNR dB | SSIM |\n|---|---|---|---|")
    for name, values in rows.items():
        if not values:
            continue
        psnr, ssim = (np.array(column) for column in zip(*values))
        label = name if name == "input (occluded)" else f"{name}: {registry[name].description}"
        print(f"| {label} | {len(values)} | {fmt(bootstrap_ci(psnr))} | {fmt(bootstrap_ci(ssim), 3)} |")


if __name__ == "__main__":
    main()
