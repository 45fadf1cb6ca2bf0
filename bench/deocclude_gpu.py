"""Benchmark (CUDA): images/s of the real-size SD-1.5 inpainting UNet + depth ControlNet denoising loop.

    python bench/deocclude_gpu.py                                  # fp16 and bf16, batch 1..16, 512 px, DDIM 50
    python bench/deocclude_gpu.py --dtypes float16 --compile       # with torch.compile (first call compiles)
    python bench/deocclude_gpu.py --sizes 256 512 --steps 20       # DPM-Solver++-like step budget

Random weights with the published architectures (bench/sd15_models.py): throughput does not depend on the
weights. Attention is PyTorch SDPA (diffusers' default processor on torch >= 2). One "image" = one sample
denoised for --steps steps under classifier-free guidance (2 rows per step), plus one VAE decode, i.e. one
`fixed`/`occlusion_prior` de-occlusion; a 7-candidate search costs 7x, the early exit (k=10 of 50) 2.2x.
Prints per dtype, size and batch: seconds per step, images/s, peak memory. Needs a CUDA device; NOT run in
the session that wrote it (no GPU there): docs/PERFORMANCE.md marks GPU figures as assumptions until it is.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.sd15_models import VAE_SCALE_FACTOR, build_models, denoising_step, step_inputs  # noqa: E402

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def cuda_time_s(fn, repeats: int) -> float:  # noqa: ANN001
    """Mean wall seconds of `fn` over `repeats` calls after two warm-ups, synchronised."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per image (DDIM 50 upstream)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/deocclude_gpu.py needs a CUDA device; use bench/diffusion_cost.py on the CPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, SDPA flash: "
          f"{torch.backends.cuda.flash_sdp_enabled()}, compile: {args.compile}, {args.steps} steps, guidance on")
    print(f"{'dtype':>9s} {'px':>4s} {'batch':>5s} {'s/step':>8s} {'VAE dec s':>9s} {'images/s':>9s} {'peak GiB':>8s}")

    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        unet, controlnet, vae = build_models(dtype=dtype, device="cuda")
        if args.compile:
            unet = torch.compile(unet, mode="max-autotune-no-cudagraphs")
            controlnet = torch.compile(controlnet, mode="max-autotune-no-cudagraphs")
        with torch.inference_mode():
            for size in args.sizes:
                for batch in args.batches:
                    torch.cuda.reset_peak_memory_stats()
                    inputs = step_inputs(2 * batch, size, dtype, "cuda")  # [uncond; cond] rows
                    latent = torch.randn(batch, 4, size // VAE_SCALE_FACTOR, size // VAE_SCALE_FACTOR,
                                         device="cuda", dtype=dtype)
                    step_s = cuda_time_s(lambda: denoising_step(unet, controlnet, inputs), args.repeats)
                    decode_s = cuda_time_s(lambda: vae.decode(latent), max(1, args.repeats // 5))
                    per_batch_s = args.steps * step_s + decode_s
                    peak_gib = torch.cuda.max_memory_allocated() / 2**30
                    print(f"{dtype_name:>9s} {size:4d} {batch:5d} {step_s:8.4f} {decode_s:9.4f} "
                          f"{batch / per_batch_s:9.2f} {peak_gib:8.1f}", flush=True)
        del unet, controlnet, vae
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
