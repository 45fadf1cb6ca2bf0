"""Benchmark: grasp labels + rendered annotation, against a naive per-frame renderer, in one process.

    python bench/annotate.py                      # 3 sequences x 24 frames x 2 cameras, 128 and 256 px
    python bench/annotate.py --threads 2          # let torch / OpenCV / llvmpipe use 2 threads
    python bench/annotate.py --profile            # where the time of the 128 px run goes

Optimised = `label_grasps` (vectorised per sequence x camera) + `annotate_frames` (one renderer per
process, meshes swapped per frame, passes at crop size, one batched hand forward per side).
Naive baseline, measured on the same frames in the same run: per frame, the grasp rule with a Python
loop and 4x4 inverses, an unbatched hand forward, a new 640x480 OffscreenRenderer and scene, the same
passes at full image size (SEG parts, SEG scene, SEG + FLAT for the feature maps), and every map cut
to the crop afterwards with cv2.warpAffine (feature maps then resized to 1/4). Object meshes are loaded
once for both (the baseline is not charged for re-reading meshes).
Fair baseline, same frames and run: the naive one with ONE 640x480 OffscreenRenderer reused for every frame
(what a careful script would do: the GL context is made once), scene still built per frame.
Figures are frames per second (best of --repeats) and ratios optimised / naive and optimised / reused.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timing import best_time_s  # noqa: E402

PROFILE_GROUPS = {  # label -> function names (pstats keys end with these) whose cumulative time counts
    "hand forward (batched, torch)": ("_hand_vertices_by_frame",),
    "object asset lookup + crop": ("object_asset", "compute_crop"),
    "image read + warp": ("read_crop_image",),
    "render: mesh swap + 4 passes": ("render",),
    "masks, visibility, feature maps": ("_build_record",),
}


_RESOURCES: list = []  # the one AnnotationResources of this run (made after the GL platform is chosen)


def annotation_resources():
    """This run's renderers, hand layers and object meshes, shared by every annotation it times."""
    from unihope.render.annotate import AnnotationResources

    if not _RESOURCES:
        _RESOURCES.append(AnnotationResources())
    return _RESOURCES[0]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="existing synthetic DexYCB root (default: generate)")
    parser.add_argument("--sequences", type=int, default=3)
    parser.add_argument("--frames", type=int, default=24, help="frames per sequence")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--naive-frames", type=int, default=24, help="frames the (slow) baseline annotates")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenCV / llvmpipe threads (1 = per core)")
    parser.add_argument("--profile", action="store_true")
    return parser.parse_args()


def set_threads(num_threads: int) -> None:
    """Pin the thread pools before the libraries start them (per-core figures need 1)."""
    os.environ["LP_NUM_THREADS"] = str(num_threads)  # Mesa llvmpipe rasteriser threads
    os.environ["OMP_NUM_THREADS"] = str(num_threads)
    import cv2
    import torch

    torch.set_num_threads(num_threads)
    cv2.setNumThreads(num_threads)


def load_frames(args: argparse.Namespace, tmp_dir: Path):
    from unihope.storage.schema import FrameRecord
    from unihope.config import HandModelConfig, SourceConfig, SyntheticConfig
    from unihope.sources import open_source
    from unihope.sources.synthetic import write_synthetic_dataset

    root = args.root
    if root is None:
        root = tmp_dir / "dexycb"
        synth_cfg = SyntheticConfig(num_sequences=args.sequences, frames_per_sequence=args.frames, num_cameras=args.cameras)
        print(f"generating {args.sequences * args.frames * args.cameras} synthetic frames into {root} ...", flush=True)
        write_synthetic_dataset(root, synth_cfg, HandModelConfig())
    source = open_source(SourceConfig(kind="dexycb", root=root), HandModelConfig())
    frames = [r for r in source.load(source.index()) if isinstance(r, FrameRecord)]
    return frames


def run_optimised(frames, size_px: int):
    from unihope.config import CropConfig, GraspConfig, HandModelConfig, RenderConfig
    from unihope.grasp import label_grasps
    from unihope.render.annotate import annotate_frames

    grasps = label_grasps(frames, GraspConfig())
    return annotate_frames(frames, grasps, CropConfig(size_px=size_px), RenderConfig(), HandModelConfig(),
                           resources=annotation_resources())


class NaiveAnnotator:
    """The straightforward version: everything per frame, full-size renders cropped afterwards."""

    def __init__(self, reuse_renderer: bool = False) -> None:
        """Args: reuse_renderer: one OffscreenRenderer per image size for all frames (the fair baseline)."""
        import numpy as np

        from unihope.config import HandModelConfig
        from unihope.render.gl import import_pyrender

        self.np = np
        self.pyrender = import_pyrender("egl")
        self.hand_cfg = HandModelConfig()
        self.get_hand_layer = annotation_resources().hand_layer
        self.load_object_asset = annotation_resources().object_asset
        self.reuse_renderer = reuse_renderer
        self._renderers: dict[tuple[int, int], object] = {}

    def renderer(self, width: int, height: int):
        """A new renderer per frame (naive), or the one reused renderer of this size."""
        if not self.reuse_renderer:
            return self.pyrender.OffscreenRenderer(width, height)
        if (width, height) not in self._renderers:
            self._renderers[width, height] = self.pyrender.OffscreenRenderer(width, height)
        return self._renderers[width, height]

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.delete()
        self._renderers.clear()

    def grasp_labels(self, frames, rre_threshold_deg: float = 5.0, rte_threshold_m: float = 0.05) -> list[bool]:
        np = self.np
        labels = []
        for frame in frames:  # reference found by scanning, one 4x4 inverse per frame
            ref = min((f for f in frames if (f.sequence_key, f.serial) == (frame.sequence_key, frame.serial)),
                      key=lambda f: f.frame_idx)  # fmt: skip
            T_ref, T_cur = np.eye(4), np.eye(4)
            T_ref[:3], T_cur[:3] = ref.object_pose, frame.object_pose
            T = np.linalg.inv(T_cur) @ T_ref
            rre_deg = np.degrees(np.arccos(np.clip((np.trace(T[:3, :3]) - 1) / 2, -1, 1)))
            labels.append(bool(rre_deg > rre_threshold_deg or np.linalg.norm(T[:3, 3]) > rte_threshold_m))
        return labels

    def annotate(self, frame, is_grasping: bool, size_px: int) -> dict:
        import cv2

        from unihope.storage.schema import GraspLabel
        from unihope.config import CropConfig
        from unihope.crop import compute_crop
        from unihope.render.camera import cv_pose_to_gl, intrinsics_camera

        np, pyrender = self.np, self.pyrender
        layer, geometry = self.get_hand_layer(frame.hand_side, self.hand_cfg)
        verts, _ = layer.forward_numpy(frame.mano_pose[None], frame.mano_betas[None], frame.mano_trans[None])
        verts = verts[0].astype(np.float64)
        asset = self.load_object_asset(frame.object_mesh_path, frame.sample_key)
        T = np.asarray(frame.object_pose, np.float64)
        grasp = GraspLabel(frame.sample_key, 0.0, 0.0, is_grasping, frame.sample_key)
        crop = compute_crop(frame, grasp, CropConfig(size_px=size_px), verts, asset.vertices_obj_m @ T[:, :3].T + T[:, 3],
                            asset.keypoints_obj_m @ T[:, :3].T + T[:, 3])
        width, height = frame.image_size_wh

        renderer = self.renderer(width, height)
        scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.ones(3))
        K = np.array(frame.K, dtype=np.float64)
        K[:2, 2] += 0.5  # pyrender pixel-centre convention (see unihope.render.renderer)
        scene.add(intrinsics_camera(pyrender, K))
        hand_pose = cv_pose_to_gl(np.eye(4))
        positions = verts.astype(np.float32)
        part_nodes = [
            scene.add(pyrender.Mesh([pyrender.Primitive(positions=positions, indices=faces, mode=4)]), pose=hand_pose)
            for faces in geometry.part_faces
        ]
        hand_node = scene.add(pyrender.Mesh([pyrender.Primitive(
            positions=positions, indices=geometry.faces, color_0=geometry.embedding_rgba, mode=4)]), pose=hand_pose)
        object_node = scene.add(pyrender.Mesh([pyrender.Primitive(
            positions=asset.vertices_obj_m.astype(np.float32), indices=asset.faces, color_0=asset.noc_rgba, mode=4)]),
            pose=cv_pose_to_gl(T))  # fmt: skip
        flags = pyrender.RenderFlags
        parts, depth_hand = renderer.render(scene, flags.SEG, {n: (i + 1,) * 3 for i, n in enumerate(part_nodes)})
        scene_map = {hand_node: (1, 1, 1), object_node: (2, 2, 2)}
        labels, depth_scene = renderer.render(scene, flags.SEG, scene_map)
        for node in part_nodes:
            node.mesh.is_visible = False
        rgba, _ = renderer.render(scene, flags.FLAT | flags.RGBA)
        if not self.reuse_renderer:
            renderer.delete()

        def cut(image):
            return cv2.warpAffine(image, crop.affine, (size_px, size_px), flags=cv2.INTER_NEAREST)

        feature_px = size_px // 4
        out = {"parts": cut(parts[..., 0]), "depth_hand": cut(depth_hand), "labels": cut(labels[..., 0]),
               "depth_scene": cut(depth_scene)}  # fmt: skip
        for name in ("labels", "depth_scene"):
            out[f"feature_{name}"] = cv2.resize(out[name], (feature_px, feature_px), interpolation=cv2.INTER_NEAREST)
        out["dense"] = cv2.resize(cut(rgba), (feature_px, feature_px), interpolation=cv2.INTER_NEAREST)
        out["image"] = cv2.cvtColor(cut(cv2.imread(frame.image_path)), cv2.COLOR_BGR2RGB)
        return out



def profile_groups(frames) -> dict[str, float]:
    """Cumulative seconds per PROFILE_GROUPS entry for one optimised 128 px run, and the total."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    run_optimised(frames, 128)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    shares = {"total": sum(v[2] for v in stats.values())}
    for group, names in PROFILE_GROUPS.items():
        shares[group] = sum(
            v[3]
            for (file, _, name), v in stats.items()
            if name in names and "unihope" in file and (name != "render" or "renderer.py" in file)
        )
    return shares


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    from unihope.storage.schema import AnnotatedFrame

    with tempfile.TemporaryDirectory(prefix="bench-annotate-") as tmp:
        # 1. Data and warm-up (renderers, hand layers, object meshes), not timed.
        frames = load_frames(args, Path(tmp))
        start = time.perf_counter()
        for size_px in (128, 256):
            run_optimised(frames[:2], size_px)
        print(f"{len(frames)} frames; one-time setup (GL contexts, hand layers): {time.perf_counter() - start:.2f} s")
        results = run_optimised(frames, 128)
        num_ok = sum(isinstance(r, AnnotatedFrame) for r in results)
        print(f"annotated {num_ok}/{len(frames)} frames (others skipped with reasons)")

        # 2. Baselines on a subset, same process: per-frame renderer (naive) and one reused renderer (fair).
        subset = frames[: args.naive_frames]
        baseline_fps = {}
        for name, reuse in (("naive (new 640x480 renderer per frame)", False), ("fair (one reused 640x480 renderer)", True)):
            annotator = NaiveAnnotator(reuse_renderer=reuse)
            annotator.annotate(subset[0], True, 128)  # import / first-call costs (and the reused context)
            seconds = best_time_s(
                lambda: [annotator.annotate(f, g, 128) for f, g in zip(subset, annotator.grasp_labels(subset))],
                max(1, args.repeats - 1),
            )
            annotator.close()
            baseline_fps[name] = len(subset) / seconds
        naive_fps, fair_fps = baseline_fps.values()

        # 3. Optimised at both crop sizes.
        print(f"\nthreads: {args.threads}   baselines on {len(subset)} frames:")
        for name, fps in baseline_fps.items():
            print(f"  {name:<40} {fps:7.1f} frames/s")
        print(f"reused renderer vs per-frame renderer: {fair_fps / naive_fps:.2f}x")
        print(f"{'crop':>6} {'frames/s':>10} {'ms/frame':>10} {'x naive':>9} {'x fair':>8}")
        for size_px in (128, 256):
            seconds = best_time_s(lambda: run_optimised(frames, size_px), args.repeats)
            fps = len(frames) / seconds
            print(f"{size_px:>4}px {fps:10.1f} {1e3 / fps:10.2f} {fps / naive_fps:8.1f}x {fps / fair_fps:7.1f}x")

        # 4. Where the time goes.
        if args.profile:
            shares = profile_groups(frames)
            total = shares.pop("total")
            print("\nprofile of one 128 px run (cProfile inflates Python-heavy parts):")
            for group, seconds in shares.items():
                print(f"  {group:<34} {100 * seconds / total:5.1f} %")
            print(f"  {'rest (loop, records, grasp)':<34} {100 * (1 - sum(shares.values()) / total):5.1f} %")


if __name__ == "__main__":
    main()
