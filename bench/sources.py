"""Benchmark of the sources: synthetic generation per view and reader throughput, as ratios to baselines.

Baselines, measured in the same process:
- generation: one plain full-frame pyrender colour render of the same table scene (the least a
  renderer-based generator must do per view); the generator renders a background per camera and
  two small windows per view, composites, and writes JPEG + PNG + NPZ + the truth image;
- reader: `np.load` of every labels file (the parse a DexYCB reader cannot avoid); the reader also
  checks the image and depth files, reads calibration once per sequence and converts PCA poses.

Usage: .venv/bin/python bench/sources.py [--sequences 4 --frames 24 --cameras 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from unihope.config import HandModelConfig, SyntheticConfig
from unihope.sources.dexycb import DexYCBSource
from unihope.sources.synthetic import write_synthetic_dataset
from unihope.sources.synthetic_render import SceneRenderers, table_texture, table_trimesh
from unihope.render.camera import cv_pose_to_gl, intrinsics_camera

NUM_BASELINE_RENDERS = 20


def _baseline_render_s(width_px: int, height_px: int, K: np.ndarray, T_cam_from_world: np.ndarray) -> float:
    renderer = SceneRenderers().get(width_px, height_px)
    pyrender = renderer.pyrender
    renderer.renderer.viewport_width, renderer.renderer.viewport_height = width_px, height_px
    scene = pyrender.Scene(ambient_light=(0.3, 0.3, 0.3))
    scene.add(intrinsics_camera(pyrender, K), pose=np.eye(4))
    scene.add(pyrender.DirectionalLight(intensity=3.0), pose=np.eye(4))
    scene.add(pyrender.Mesh.from_trimesh(table_trimesh(table_texture(0))), pose=cv_pose_to_gl(T_cam_from_world))
    renderer.renderer.render(scene)  # upload
    start = time.perf_counter()
    for _ in range(NUM_BASELINE_RENDERS):
        renderer.renderer.render(scene)
    return (time.perf_counter() - start) / NUM_BASELINE_RENDERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--cameras", type=int, default=2)
    args = parser.parse_args()
    cfg = SyntheticConfig(num_sequences=args.sequences, frames_per_sequence=args.frames, num_cameras=args.cameras)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"
        # 1. Generation
        start = time.perf_counter()
        summary = write_synthetic_dataset(root, cfg, HandModelConfig())
        gen_s = time.perf_counter() - start
        per_view_s = gen_s / summary.num_images
        # 2. Baseline render with a real camera of the dataset
        source = DexYCBSource(root, "all")
        refs = source.index()
        first = source.load(refs[:1])[0]
        import yaml

        extrinsics_path = next((root / "calibration").glob("extrinsics_*/extrinsics.yml"))
        T_world_from_cam = np.eye(4)
        T_world_from_cam[:3] = np.asarray(yaml.safe_load(extrinsics_path.read_text())["extrinsics"][first.serial]).reshape(3, 4)
        baseline_s = _baseline_render_s(cfg.image_width_px, cfg.image_height_px, first.K, np.linalg.inv(T_world_from_cam))
        # 3. Reader vs np.load of the labels
        start = time.perf_counter()
        records = DexYCBSource(root, "all").load(refs)
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        for ref in refs:
            with np.load(root / ref.sequence_key / ref.serial / f"labels_{ref.frame_idx:06d}.npz") as npz:
                _ = [npz[k] for k in ("pose_y", "pose_m", "joint_3d", "joint_2d")]
        npz_s = time.perf_counter() - start
    print(summary.describe())
    print(f"generation: {gen_s:.1f} s for {summary.num_images} views = {per_view_s * 1e3:.0f} ms/view; "
          f"one full-frame render = {baseline_s * 1e3:.0f} ms -> ratio {per_view_s / baseline_s:.2f}x")
    print(f"reader: {len(records)} frames in {read_s:.2f} s = {read_s / len(refs) * 1e3:.2f} ms/frame; "
          f"np.load of the labels = {npz_s / len(refs) * 1e3:.2f} ms/frame -> ratio {read_s / npz_s:.2f}x")


if __name__ == "__main__":
    main()
