"""Benchmark: de-occlusion throughput, the cost of beta search, and per-sample beta batching.

    python bench/deocclude_speed.py                 # 16 crops of 128 px, tiny ControlNet at 64 px, 2 steps
    python bench/deocclude_speed.py --threads 2     # let torch use 2 threads (default 1: 2 shared cores)

Crops come from the constructed scenes of `unihope.deocclude.testing` (occluded, 128 px); throughput does not
depend on their content. Figures, all measured in this process (best of --repeats):

1. frames/s of `render`, `inpaint` and `controlnet` (tiny random models: mechanics, not real cost);
2. `search` with C candidates: time per frame relative to C = 1 (the diffusion cost grows ~linearly in C,
   scoring is negligible);
3. `occlusion_prior` (a different beta per frame) in one batched call, via the per-sample strength hook, against
   the naive way: one pipeline call per frame.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timing import best_time_s  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.tiny_diffusion import save_tiny_models  # noqa: E402
from unihope.config import ControlNetConfig, DeocclusionConfig  # noqa: E402
from unihope.deocclude import build_deoccluder  # noqa: E402
from unihope.deocclude.testing import SceneBuilder  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # 1. Inputs and models
    builder = SceneBuilder(args.size)
    frames = [builder.build(f"bench/seq/000000/{i:06d}", seed=i).frame for i in range(args.frames)]
    paths = save_tiny_models(Path(tempfile.mkdtemp(prefix="tiny_sd_")))
    net = ControlNetConfig(
        base_model=str(paths["base_model"]),
        controlnet_depth=str(paths["controlnet_depth"]),
        num_inference_steps=2,
        working_size_px=64,
        guidance_scale=2.0,
        device="cpu",
    )
    base = DeocclusionConfig(batch_size=args.batch_size)
    print(f"{len(frames)} crops of {args.size} px, batch {args.batch_size}, torch threads {args.threads}, "
          f"tiny ControlNet: 2 steps at 64 px, guidance on")

    # 2. Throughput per backend
    print(f"{'backend':34s} {'frames/s':>9s} {'ms/frame':>9s}")
    for name, cfg in (
        ("render", base),
        ("inpaint", base.model_copy(update={"backend": "inpaint"})),
        ("controlnet fixed beta (tiny)", base.model_copy(update={"backend": "controlnet", "beta_policy": "fixed", "controlnet": net})),
    ):
        deoccluder = build_deoccluder(cfg)
        seconds = best_time_s(lambda: deoccluder.run(frames), args.repeats)
        print(f"{name:34s} {len(frames) / seconds:9.1f} {1000 * seconds / len(frames):9.1f}")

    # 3. Search cost against the number of candidates
    grid = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    per_frame = {}
    for num in (1, 2, 4, 7):
        cfg = base.model_copy(
            update={"backend": "controlnet", "beta_policy": "search", "beta_candidates": grid[:num], "controlnet": net}
        )
        deoccluder = build_deoccluder(cfg)
        per_frame[num] = best_time_s(lambda: deoccluder.run(frames), args.repeats) / len(frames)
    print("search: candidates -> ms/frame (x vs 1 candidate)")
    for num, seconds in per_frame.items():
        print(f"  C={num}: {1000 * seconds:7.1f} ms  x{seconds / per_frame[1]:.2f}")

    # 4. Per-sample beta in one batched call vs one call per frame
    prior = build_deoccluder(base.model_copy(update={"backend": "controlnet", "beta_policy": "occlusion_prior", "controlnet": net}))
    batched_s = best_time_s(lambda: prior.run(frames), args.repeats)
    single = build_deoccluder(base.model_copy(update={"backend": "controlnet", "beta_policy": "occlusion_prior",
                                                       "batch_size": 1, "controlnet": net}))
    naive_s = best_time_s(lambda: single.run(frames), args.repeats)
    betas = np.array([r.beta for r in prior.run(frames[: args.batch_size])])
    print(f"occlusion_prior, {len(np.unique(np.round(betas, 4)))} distinct betas per batch of {len(betas)}: "
          f"batched {1000 * batched_s / len(frames):.1f} ms/frame vs one call per frame "
          f"{1000 * naive_s / len(frames):.1f} ms/frame: x{naive_s / batched_s:.2f} faster")


if __name__ == "__main__":
    main()
