"""Benchmark: seconds per denoising step of the real-size SD-1.5 inpainting UNet + depth ControlNet on the CPU.

    python bench/diffusion_cost.py                      # 256 and 512 px, batch 1 and 2 rows, fp32, 2 threads
    python bench/diffusion_cost.py --sizes 256 --threads 2

Random weights with the published architectures (bench/sd15_models.py): the cost does not depend on the
weights. Per size it prints one ControlNet + UNet evaluation of 1 row (a step without guidance) and of 2 rows
(a step under classifier-free guidance, [uncond; cond]), the VAE encode and decode of one image (the
early-exit preview costs one decode per candidate), and the machine's load average, since this machine is
shared. GPU figures: bench/deocclude_gpu.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.sd15_models import VAE_SCALE_FACTOR, build_models, denoising_step, step_inputs  # noqa: E402


def timed_s(fn, repeats: int) -> float:  # noqa: ANN001
    """Best of `repeats` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # 1. Models
    start = time.perf_counter()
    unet, controlnet, vae = build_models()
    params = {name: sum(p.numel() for p in module.parameters()) / 1e6
              for name, module in (("unet", unet), ("controlnet", controlnet), ("vae", vae))}
    print(f"built in {time.perf_counter() - start:.0f} s; parameters (M): "
          + ", ".join(f"{k} {v:.0f}" for k, v in params.items()))
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, CPU; load average before: {os.getloadavg()}")

    # 2. Per size: one step at 1 and 2 rows, VAE encode and decode of one image
    print(f"{'px':>5s} {'step 1 row s':>13s} {'step 2 rows s':>14s} {'VAE enc s':>10s} {'VAE dec s':>10s} {'load avg':>18s}")
    with torch.inference_mode():
        for size in args.sizes:
            one = step_inputs(1, size, torch.float32, "cpu")
            two = step_inputs(2, size, torch.float32, "cpu")
            step1_s = timed_s(lambda: denoising_step(unet, controlnet, one), args.repeats)
            step2_s = timed_s(lambda: denoising_step(unet, controlnet, two), args.repeats)
            image = torch.randn(1, 3, size, size)
            latent = torch.randn(1, 4, size // VAE_SCALE_FACTOR, size // VAE_SCALE_FACTOR)
            enc_s = timed_s(lambda: vae.encode(image).latent_dist.mode(), 1)
            dec_s = timed_s(lambda: vae.decode(latent), 1)
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"{size:5d} {step1_s:13.2f} {step2_s:14.2f} {enc_s:10.2f} {dec_s:10.2f} {load:>18s}", flush=True)


if __name__ == "__main__":
    main()
