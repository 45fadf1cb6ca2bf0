"""Benchmark: de-occlusion throughput, the cost of beta search, and per-sample beta batching.

    python bench/deocclude_speed.py                 # 16 crops of 128 px, tiny ControlNet at 64 px, 2 steps
    python bench/deocclude_speed.py --threads 2     # let torch use 2 threads (default 1: 2 shared cores)

Crops come from the constructed scenes of `tests/capsule_scenes.py` (occluded, 128 px); throughput does not
depend on their content. Figures, all measured in this process (best of --repeats):

1. frames/s of `render`, `inpaint` and `controlnet` (tiny random models: mechanics, not real cost);
2. `search` with C candidates: time per frame relative to C = 1 (the diffusion cost grows ~linearly in C,
   scoring is negligible);
3. `occlusion_prior` (a different beta per frame) in one batched call, via the per-row strength tensor, against
   the naive way: one diffusion call per frame;
4. cost per beta policy at upstream's schedule (DDIM 50, guidance on) and the cheaper ones: UNet evaluations per
   frame (counted on the UNet by a hook, and as recorded in each result) and wall time, against HandRefiner's
   sequential 7-strength search (one full diffusion per strength, one after another). The counts are exact
   for real models too; the tiny models' wall times are not (see bench/diffusion_cost.py for real sizes).
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
from unihope.deocclude.base import Deoccluder  # noqa: E402
from unihope.deocclude.controlnet_backend import ControlNetDeoccluder  # noqa: E402
from tests.capsule_scenes import SceneBuilder  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cost-frames", type=int, default=2, help="frames for the per-policy cost table (4.)")
    parser.add_argument("--only-cost", action="store_true", help="run only the per-policy cost table")
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

    if args.only_cost:
        policy_costs(frames[: args.cost_frames], net, base)
        return

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

    # 5. Cost per policy
    policy_costs(frames[: args.cost_frames], net, base)


class SequentialSearch(ControlNetDeoccluder):
    """HandRefiner's search: one full diffusion per candidate strength, one after another."""

    _generate_candidates = Deoccluder._generate_candidates


def policy_costs(frames: list, net: ControlNetConfig, base: DeocclusionConfig) -> None:
    """Print UNet evaluations per frame and wall time per policy, relative to the sequential 7-strength search."""
    grid = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    search = {"backend": "controlnet", "beta_policy": "search", "beta_candidates": grid}
    prior = {"backend": "controlnet", "beta_policy": "occlusion_prior"}
    ddim50 = {"num_inference_steps": 50, "guidance_scale": 9.0, "scheduler": "ddim"}
    dpm20 = {"num_inference_steps": 20, "guidance_scale": 9.0, "scheduler": "dpmsolver++"}
    rows = [
        ("HandRefiner sequential 7 x DDIM 50", search, ddim50, SequentialSearch),
        ("search 7 x DDIM 50, one batch", search, ddim50, None),
        ("search 7, early exit k=10 of DDIM 50, top 1", search, ddim50 | {"preview_step": 10}, None),
        ("search 7, early exit k=10 of DDIM 50, top 2", search, ddim50 | {"preview_step": 10, "finish_top": 2}, None),
        ("search 7 x DPM-Solver++ 20", search, dpm20, None),
        ("search 7, early exit k=4 of DPM++ 20, top 1", search, dpm20 | {"preview_step": 4}, None),
        ("occlusion_prior, DDIM 50", prior, ddim50, None),
        ("occlusion_prior, DPM-Solver++ 20", prior, dpm20, None),
    ]
    print(f"cost per policy ({len(frames)} frames, tiny models at {net.working_size_px} px, guidance 9):")
    print(f"  {'policy':46s} {'UNet evals/frame':>16s} {'x sequential':>12s} {'s/frame':>8s} {'x sequential':>12s}")
    reference: tuple[float, float] | None = None
    for name, policy, schedule, cls in rows:
        cfg = base.model_copy(update=policy | {"controlnet": net.model_copy(update=schedule)})
        deoccluder = cls(cfg) if cls is not None else build_deoccluder(cfg)
        counted = [0]
        handle = deoccluder.pipe.unet.register_forward_pre_hook(
            lambda module, args: counted.__setitem__(0, counted[0] + int(args[0].shape[0]))
        )
        seconds = best_time_s(lambda: deoccluder.run(frames), 1)
        handle.remove()
        evals = counted[0] / len(frames)
        per_frame_s = seconds / len(frames)
        if reference is None:
            reference = (evals, per_frame_s)
        print(f"  {name:46s} {evals:16.0f} {evals / reference[0]:12.3f} {per_frame_s:8.3f} "
              f"{per_frame_s / reference[1]:12.3f}")


if __name__ == "__main__":
    main()
