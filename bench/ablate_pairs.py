"""Benchmark: do the de-occluded pairs make a better occluded-hand model? Arms x paired seeds, one held-out set.

    python bench/ablate_pairs.py                          # build configs/ablation.yaml, 5 seeds x 4 arms
    python bench/ablate_pairs.py --data /tmp/ablate/data  # reuse (or write) the build there
    python bench/ablate_pairs.py --seeds 3 --steps 200    # a quicker, noisier look

Arms (same model, same seeds, same steps, same batch order per seed; only the pairs differ):
- `none`: no second image at all (`ablation.use_enhancement: false`);
- `render`: the build's own pairs (the weight-free render-composite de-occluder);
- `oracle`: the same paired samples, the second image replaced by the synthetic source's true object-free
  render cut with the sample's crop affine: the ceiling, whether training can use a pair at all;
- `shuffled`: the same paired samples, each given the stored de-occluded image of another paired sample
  (a fixed derangement): a control that must not help.
Only this benchmark reads `truth/` (never a build stage).

Every run trains `configs/train_ablation.yaml` (`--train-config configs/train_ablation_gpu.yaml` scales the
same arms up on a GPU worker; `--set` overrides apply to all arms) on the train split
and scores every held-out sample; the table reports MPJPE and PA-MPJPE per UniHOPE occlusion bin and for
hand-only / hand-object samples, each arm's mean over seeds, and its paired difference to `none` (mean
over seeds of arm - none on the same seed) with a 95 % t interval over seeds. Writes `ablation.md`,
`ablation.json` and `error_vs_visibility.png` into `--out`; two runs train at a time (one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

BUILD_CONFIG = REPO / "configs" / "ablation.yaml"
TRAIN_CONFIG = REPO / "configs" / "train_ablation.yaml"
SYNTHETIC_DIR = "_synthetic"  # the build's default synthetic root inside its --out
BINS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))  # UniHOPE's bins: [0, .25], (.25, .5], ...
BIN_LABELS = ("[0, 0.25]", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, 1]")
PLOT_BIN_WIDTH = 0.05  # visibility bin of the plot
SECOND_IMAGES_FILE = "second_images_{arm}.npz"
T_CRIT_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True)
class Arm:
    """One arm: whether the pairs are used, where the second image of a pair comes from, extra config."""

    name: str
    use_pairs: bool
    second_image: str  # "stored" | "oracle" | "shuffled" | "store:<dataset dir>" (unused without pairs)
    description: str
    overrides: tuple[str, ...] = ()  # train config key=value for this arm only


ARMS = {
    "none": Arm("none", False, "stored", "no pairs (no second image, no enhancement)"),
    "render": Arm("render", True, "stored", "the build's pairs (weight-free render-composite)"),
    "oracle": Arm("oracle", True, "oracle", "true object-free render as the second image (ceiling)"),
    "shuffled": Arm("shuffled", True, "shuffled", "another paired sample's de-occluded image (control)"),
    # the two levers apart (not in the default run): --arms none,oracle,oracle-supervise,oracle-distill
    "oracle-supervise": Arm("oracle-supervise", True, "oracle", "oracle pairs, supervised only (enhancement 0)",
                            ("enhancement.image_weight=0", "enhancement.token_weight=0",
                             "enhancement.output_weight=0")),
    "oracle-distill": Arm("oracle-distill", True, "oracle", "oracle pairs, enhancement only (no pair supervision)",
                          ("enhancement.supervise_deoccluded=false",)),
    "oracle-add": Arm("oracle-add", True, "oracle", "oracle pairs, occluded image keeps weight 1 (+0.5 de-occluded)",
                      ("enhancement.pair_supervision=add",)),
    "oracle-average": Arm("oracle-average", True, "oracle", "oracle pairs, upstream's averaging (0.5 + 0.5)",
                          ("enhancement.pair_supervision=average",)),
    "oracle-paper": Arm("oracle-paper", True, "oracle", "oracle pairs, the paper form of the enhancement",
                        ("enhancement.form=paper",)),
    "oracle-distill-x10": Arm("oracle-distill-x10", True, "oracle", "oracle pairs, enhancement only, weights x10",
                              ("enhancement.supervise_deoccluded=false", "enhancement.image_weight=1",
                               "enhancement.token_weight=1", "enhancement.output_weight=5")),
}
DEFAULT_ARMS = ("none", "render", "oracle", "shuffled")


def arm_from_store(spec: str) -> Arm:
    """`NAME=DIR`: an arm whose second images are another build's de-occluded images of the same frames
    (e.g. a build with a trained ControlNet: `unihope build --config configs/ablation.yaml --set ...`)."""
    name, _, directory = spec.partition("=")
    if not name or not directory:
        raise SystemExit(f"--pairs-from takes NAME=DIR, got {spec!r}")
    return Arm(name, True, f"store:{directory}", f"de-occluded images of the build at {directory}")


def resolve_arms(arms_csv: str, pairs_from: list[str]) -> tuple[dict[str, Arm], list[str]]:
    """The arm registry (ARMS plus one arm per `--pairs-from NAME=DIR`) and the arm names a run asked for."""
    registry = dict(ARMS)
    for spec in pairs_from:
        extra = arm_from_store(spec)
        registry[extra.name] = extra
    arms = arms_csv.split(",") + [spec.partition("=")[0] for spec in pairs_from]
    unknown = [a for a in arms if a not in registry]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}: name only {sorted(ARMS)} or --pairs-from NAME=DIR")
    return registry, arms


class SecondImageDataset:
    """A PairedDataset whose de-occluded images are replaced for some samples (by sample key).

    Only without augmentation: the replacement happens after the pair was read, so an augmented pair
    would no longer share its augmentation.
    """

    reads_batches = True

    def __init__(self, dataset, images_by_key: dict[str, np.ndarray], unpair_others: bool = False) -> None:
        if getattr(dataset, "augment", None) is not None:
            raise ValueError("SecondImageDataset needs an unaugmented dataset (data.augment: false)")
        self.dataset, self.images_by_key, self.unpair_others = dataset, images_by_key, unpair_others
        self.augment = None
        self.version_id = getattr(dataset, "version_id", "")

    def __len__(self) -> int:
        return len(self.dataset)

    def pair_flags(self) -> np.ndarray:
        if self.unpair_others:
            raise ValueError("data.pair_share does not work with a --pairs-from arm (its pairs differ per key)")
        return self.dataset.pair_flags()

    def __getitem__(self, items):
        import torch

        batch = self.dataset[items]
        single = not isinstance(items, list)
        keys = [batch["sample_key"]] if single else batch["sample_key"]
        for row, key in enumerate(keys):
            image = self.images_by_key.get(str(key))
            if image is None and self.unpair_others:  # paired here but not in the other build: no pair
                if single:
                    batch["has_pair"] = False
                else:
                    batch["has_pair"][row] = False
            if image is not None:
                chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
                if single:
                    batch["image_deoccluded"] = chw
                else:
                    batch["image_deoccluded"][row] = chw
        return batch


# -- data -----------------------------------------------------------------------------------------


def ensure_build(data_dir: Path, build_config: Path) -> None:
    """Build the ablation dataset with the project's own CLI unless a finalized one is there."""
    if (data_dir / "manifest.json").is_file() or any(data_dir.glob("versions/*")):
        return
    print(f"building {build_config.name} into {data_dir} (unihope build) ...", flush=True)
    started = time.perf_counter()
    unihope = Path(sys.executable).with_name("unihope")
    subprocess.run([str(unihope), "build", "--config", str(build_config), "--out", str(data_dir)], check=True)
    print(f"build done in {time.perf_counter() - started:.0f} s", flush=True)


def second_images(data_dir: Path, out_dir: Path, arm: Arm, seed: int = 0) -> dict[str, np.ndarray]:
    """The replacement second images of an arm, by sample key (cached as an .npz in `out_dir`)."""
    if not arm.use_pairs or arm.second_image == "stored":
        return {}
    cache = out_dir / SECOND_IMAGES_FILE.format(arm=arm.name)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            keys, images = stored["keys"], stored["images"]  # each stored[...] reads the whole array: once
        return {str(k): images[i] for i, k in enumerate(keys)}
    from unihope.storage.view import open_dataset

    view = open_dataset(str(data_dir))
    try:
        keep = view.column("keep").astype(bool)
        keys = [str(k) for k in view.column("sample_key")]
        paired = np.flatnonzero(keep)
        if arm.second_image == "oracle":
            from unihope.train.deoccluder_data import truth_crop_of_key as truth_crop

            affines = view.column("crop_affine")
            size = int(view.sample(int(paired[0]), ("image",))["image"].shape[0])
            images = np.stack([truth_crop(data_dir / SYNTHETIC_DIR, keys[i], affines[i], size) for i in paired])
        elif arm.second_image.startswith("store:"):
            other = open_dataset(arm.second_image.removeprefix("store:"))
            try:
                other_index = {str(k): i for i, k in enumerate(other.column("sample_key"))}
                other_keep = other.column("keep").astype(bool)
                paired = np.array([i for i in paired if other_keep[other_index.get(keys[i], -1)]
                                   and keys[i] in other_index], dtype=np.int64)  # fmt: skip
                images = np.stack([other.sample(other_index[keys[i]], ("image_deoccluded",))["image_deoccluded"]
                                   for i in paired])  # fmt: skip
            finally:
                other.close()
        elif arm.second_image == "shuffled":
            rng = np.random.default_rng(seed)
            cycle = rng.permutation(len(paired))  # one random cycle through all pairs: nobody keeps its own
            donor_position = np.empty(len(paired), dtype=np.int64)
            donor_position[cycle] = np.roll(cycle, -1)
            donors = paired[donor_position]
            images = np.stack([view.sample(int(i), ("image_deoccluded",))["image_deoccluded"] for i in donors])
        else:
            raise ValueError(f"unknown second image source {arm.second_image!r}")
    finally:
        view.close()
    chosen = [keys[i] for i in paired]
    np.savez(cache, keys=np.array(chosen), images=images)
    return dict(zip(chosen, images))


# -- one run --------------------------------------------------------------------------------------


def run_one(data_dir: str, out_dir: str, arm: Arm, seed: int, overrides: tuple[str, ...],
            train_config: str = str(TRAIN_CONFIG)) -> str:
    """Train one (arm, seed) and score every held-out sample; returns the per-sample .npz path."""
    import torch

    from unihope.overrides import apply_overrides
    from unihope.tip_convention import tip_convention_of_dataset
    from unihope.train.checkpoints import load_checkpoint
    from unihope.train.data import open_paired_dataset
    from unihope.train.evaluate import evaluate
    from unihope.train.loop import train
    from unihope.train.spec import build_hand_layer, build_model, resolve_device
    from unihope.train_config import TrainConfig

    run_dir = Path(out_dir) / "runs" / f"{arm.name}_seed{seed}"
    result_path = run_dir / "per_sample.npz"
    if result_path.is_file():
        return str(result_path)
    cfg = apply_overrides(TrainConfig.from_yaml(Path(train_config)), (
        *overrides, *arm.overrides, f"seed={seed}", f"ablation.use_enhancement={str(arm.use_pairs).lower()}"))
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    train_set = open_paired_dataset(data_dir, "train", cfg, cfg.data.max_train_samples)
    eval_set = open_paired_dataset(data_dir, "val", cfg, cfg.data.max_eval_samples)
    replaced = second_images(Path(data_dir), Path(out_dir), arm)
    if replaced:  # a --pairs-from arm: only the frames paired in both builds keep a pair
        train_set = SecondImageDataset(train_set, replaced, unpair_others=arm.second_image.startswith("store:"))
    hand_layer = build_hand_layer(cfg.hand, tip_convention_of_dataset(eval_set))
    started = time.perf_counter()
    result = train(cfg, train_set, None, run_dir, hand_layer, resume=False, log=lambda line: None)
    model = build_model(cfg, hand_layer)
    _, stats = load_checkpoint(result.checkpoint_path, model)
    device = resolve_device(cfg.device)
    report = evaluate(model.to(device), eval_set, cfg, stats, device)
    history = [json.loads(line) for line in (run_dir / "loss_history.jsonl").read_text().splitlines() if line]
    np.savez(
        result_path, mpjpe_mm=report.mpjpe_mm, pa_mpjpe_mm=report.pa_mpjpe_mm, visibility=report.visibility,
        grasp=report.grasp_label, sample_keys=np.array(report.sample_keys),
        train_seconds=time.perf_counter() - started, num_train=len(train_set),
        num_pairs_train=-1 if getattr(train_set, "unpair_others", False) else int(np.sum(train_set.pair_flags())),
        history=json.dumps(history),
    )  # fmt: skip
    for checkpoint in (run_dir / "checkpoints").glob("*.safetensors"):
        checkpoint.unlink()  # 15 MB each, and the per-sample errors are what the table needs
    return str(result_path)


# -- statistics -----------------------------------------------------------------------------------


def bin_masks(visibility: np.ndarray, grasp: np.ndarray) -> dict[str, np.ndarray]:
    """Sample selections of the table: all, each UniHOPE bin, hand-only and hand-object."""
    masks = {"all": np.ones(len(visibility), dtype=bool)}
    for (low, high), label in zip(BINS, BIN_LABELS):
        masks[label] = ((visibility > low) | (low == 0.0)) & (visibility <= high)
    masks["hand-only"] = grasp == 0
    masks["hand-object"] = grasp == 1
    return masks


def paired_interval(differences: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-seed paired differences and its 95 % t interval (nan without two seeds)."""
    n = len(differences)
    mean = float(np.mean(differences))
    if n < 2:
        return mean, float("nan"), float("nan")
    half = T_CRIT_95.get(n - 1, 1.96) * float(np.std(differences, ddof=1)) / np.sqrt(n)
    return mean, mean - half, mean + half


def summarise(results: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    """Per arm, per selection: mean over seeds of the selection's mean error, and the paired difference to `none`."""
    first = results["none"][seeds[0]]
    masks = bin_masks(first["visibility"], first["grasp"])
    table: dict = {"counts": {name: int(mask.sum()) for name, mask in masks.items()}, "arms": {}}
    for arm, by_seed in results.items():
        for seed in seeds:
            if list(by_seed[seed]["sample_keys"]) != list(first["sample_keys"]):
                raise ValueError(f"{arm} seed {seed} scored another held-out set")
        rows = {}
        for metric in ("mpjpe_mm", "pa_mpjpe_mm"):
            for name, mask in masks.items():
                if not mask.any():
                    continue
                per_seed = np.array([by_seed[s][metric][mask].mean() for s in seeds])
                row = {"mean": float(per_seed.mean()), "per_seed": per_seed.tolist()}
                if arm != "none":
                    base = np.array([results["none"][s][metric][mask].mean() for s in seeds])
                    diff, low, high = paired_interval(per_seed - base)
                    row.update(diff=diff, ci_low=low, ci_high=high)
                rows[f"{metric}|{name}"] = row
        table["arms"][arm] = rows
    return table


def markdown(table: dict, seeds: list[int], meta: dict) -> str:
    """The table as markdown: one block per metric, arms as rows, selections as columns."""
    lines = [
        f"Seeds {seeds} (paired across arms), {meta['steps']} steps of batch {meta['batch_size']}, "
        f"{meta['num_train']} training samples ({meta['num_pairs_train']} with a pair), "
        f"{meta['num_eval']} held-out samples. Cells: mean over seeds; below it, the paired difference "
        "to `none` (arm - none, mean over seeds) and its 95 % t interval over seeds. Negative = better.",
        "",
    ]
    names = [n for n in table["counts"] if table["counts"][n] > 0]
    for metric, title in (("mpjpe_mm", "MPJPE (mm, wrist-aligned)"), ("pa_mpjpe_mm", "PA-MPJPE (mm)")):
        lines += [f"### {title}", "", "| arm | " + " | ".join(f"{n} (n={table['counts'][n]})" for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        for arm, rows in table["arms"].items():
            cells = []
            for name in names:
                row = rows[f"{metric}|{name}"]
                cell = f"{row['mean']:.2f}"
                if "diff" in row:
                    cell += f"<br>{row['diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
                cells.append(cell)
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, dict[int, dict]], seeds: list[int], path: Path) -> None:
    """MPJPE vs visibility (bins of PLOT_BIN_WIDTH), mean over seeds per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.arange(0.0, 1.0 + PLOT_BIN_WIDTH, PLOT_BIN_WIDTH)
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, by_seed in results.items():
        vis = by_seed[seeds[0]]["visibility"]
        errors = np.mean([by_seed[s]["mpjpe_mm"] for s in seeds], axis=0)
        centres, means = [], []
        for low, high in zip(edges[:-1], edges[1:]):
            chosen = (vis > low) & (vis <= high)
            if chosen.sum() >= 5:
                centres.append((low + high) / 2)
                means.append(errors[chosen].mean())
        ax.plot(centres, means, marker="o", label=arm)
    ax.set_xlabel(f"hand visibility (bins of {PLOT_BIN_WIDTH}; >= 5 samples)")
    ax.set_ylabel("held-out MPJPE (mm), mean over seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/unihope_ablation/data"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/unihope_ablation/result"))
    parser.add_argument("--build-config", type=Path, default=BUILD_CONFIG)
    parser.add_argument("--train-config", type=Path, default=TRAIN_CONFIG,
                        help="e.g. configs/train_ablation_gpu.yaml on a GPU worker (with --workers 1)")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"of {sorted(ARMS)}")
    parser.add_argument("--pairs-from", action="append", default=[], metavar="NAME=DIR",
                        help="an extra arm: second images from another build of the same frames")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="optim.max_steps (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="train config key=value")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    registry, arms = resolve_arms(args.arms, args.pairs_from)
    if "none" not in arms:
        raise SystemExit(f"--arms must include 'none' (the baseline every arm is paired with); got {args.arms}")
    overrides = tuple(args.overrides) + ((f"optim.max_steps={args.steps}",) if args.steps else ())
    seeds = list(range(args.seeds))

    # 1. Data and the arms' second images (made once, before the runs)
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    ensure_build(args.data, args.build_config)
    args.out.mkdir(parents=True, exist_ok=True)
    for arm in arms:
        second_images(args.data, args.out, registry[arm])

    # 2. Runs: seeds paired across arms, two at a time
    started = time.perf_counter()
    jobs = [(arm, seed) for seed in seeds for arm in arms]
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = {job: pool.submit(run_one, str(args.data), str(args.out), registry[job[0]], job[1], overrides,
                                    str(args.train_config)) for job in jobs}
        paths = {}
        for job, future in futures.items():
            paths[job] = future.result()
            print(f"{job[0]:>9} seed {job[1]}: done ({time.perf_counter() - started:.0f} s)", flush=True)

    # 3. Table, JSON and plot
    results: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    for (arm, seed), path in paths.items():
        with np.load(path, allow_pickle=False) as stored:
            results[arm][seed] = {k: stored[k] for k in stored.files}
    first = results["none"][seeds[0]]
    from unihope.train_config import TrainConfig
    from unihope.overrides import apply_overrides

    cfg = apply_overrides(TrainConfig.from_yaml(args.train_config), overrides)
    meta = {"steps": cfg.optim.max_steps, "batch_size": cfg.optim.batch_size, "num_train": int(first["num_train"]),
            # the most pairs any arm trained with (a --pairs-from arm records -1: its count depends on the other build)
            "num_pairs_train": max(int(results[a][seeds[0]]["num_pairs_train"]) for a in arms),
            "num_eval": len(first["mpjpe_mm"]),
            "arms": {a: registry[a].description for a in arms}, "overrides": list(overrides),
            "wall_seconds": time.perf_counter() - started}  # fmt: skip
    table = summarise(results, seeds)
    text = markdown(table, seeds, meta)
    (args.out / "ablation.md").write_text(text + "\n")
    (args.out / "ablation.json").write_text(json.dumps({"meta": meta, **table}, indent=1))
    plot(results, seeds, args.out / "error_vs_visibility.png")
    print(text)
    print(f"written: {args.out / 'ablation.md'}, ablation.json, error_vs_visibility.png")


if __name__ == "__main__":
    main()
