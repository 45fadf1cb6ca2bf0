"""The `unihope` command: each subcommand parses its arguments and calls one function."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="UniHOPE data generation and training.")


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def inspect(
    mano_dir: Optional[Path] = typer.Option(None, help="Folder with the official MANO_RIGHT.pkl / MANO_LEFT.pkl."),
    render_platform: str = typer.Option("egl", help="egl | osmesa"),
) -> None:
    """Show what is installed, which hand model and which renderer are in use."""
    import pickle

    from unihope.inspect_env import describe_environment

    try:
        lines = list(describe_environment(mano_dir=mano_dir, render_platform=render_platform))
    except (ValueError, pickle.UnpicklingError) as err:  # e.g. a MANO pickle that names code
        _fail(f"inspect: {err}")
    for line in lines:
        typer.echo(line)


@app.command("convert-mano")
def convert_mano(src: Path, dst: Path) -> None:
    """Convert an official chumpy-based MANO pickle to plain numpy (no chumpy needed)."""
    import pickle

    from unihope.hand.convert import convert_official_mano

    try:
        convert_official_mano(src, dst)
    except (ValueError, pickle.UnpicklingError) as err:
        _fail(f"convert-mano: {err}")
    typer.echo(f"wrote {dst}")


@app.command()
def synth(
    out: Path = typer.Option(..., help="Output folder for the synthetic dataset."),
    format: str = typer.Option("dexycb", help="dexycb | ho3d"),
    sequences: int = typer.Option(4, help="Number of sequences."),
    frames: int = typer.Option(24, help="Frames per sequence."),
    cameras: int = typer.Option(2, help="Cameras per sequence (DexYCB format)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write a small synthetic dataset in DexYCB's (or HO3D_v2's) exact on-disk layout."""
    from unihope.config import ConfigError, HandModelConfig, SyntheticConfig
    from unihope.sources.synthetic import write_synthetic_dataset

    try:
        cfg = SyntheticConfig(
            format=format, num_sequences=sequences, frames_per_sequence=frames, num_cameras=cameras, seed=seed
        )
    except (ValueError, ConfigError) as err:
        _fail(str(err))
    summary = write_synthetic_dataset(out, cfg, HandModelConfig())
    typer.echo(summary.describe())


@app.command()
def build(
    config: Path = typer.Option(Path("configs/demo.yaml"), help="Pipeline config (YAML)."),
    source: Optional[str] = typer.Option(None, help="synthetic | dexycb:PATH | ho3d:PATH (overrides the config)."),
    out: str = typer.Option(..., help="Output dataset path or fsspec URL."),
    train: bool = typer.Option(False, "--train", help="Train on the dataset when the build finishes."),
    train_config: Path = typer.Option(Path("configs/train_demo.yaml"), help="Training config for --train."),
    train_out: Optional[Path] = typer.Option(
        None, help="Root of --train's run folders (<dataset version>-<config digest>/ each); default runs/<name>."),
    wait_lock: bool = typer.Option(False, "--wait-lock", help="Wait for another build of --out to finish instead of refusing."),
) -> None:
    """Run the build_dataset flow: source -> grasp -> annotate -> de-occlude -> pack -> finalize."""
    from flows.build import run_build_from_cli

    run_build_from_cli(config_path=config, source=source, out=out, train=train, train_config_path=train_config,
                       train_out=train_out, wait_lock=wait_lock)


@app.command()
def train(
    config: Path = typer.Option(Path("configs/train_demo.yaml"), help="Training config (YAML)."),
    data: str = typer.Option(..., help="Dataset path or URL written by `unihope build`."),
    out: Optional[Path] = typer.Option(None, help="Run folder: checkpoints, metrics.json, plots."),
    runs_dir: Optional[Path] = typer.Option(
        None, help="Instead of --out: train in <runs-dir>/<dataset version>-<config digest>/ (as `build --train`)."),
    mano_dir: Optional[Path] = typer.Option(
        None, help="Folder with the MANO_RIGHT.pkl / MANO_LEFT.pkl the dataset was built with (overrides hand.mano_dir)."),
) -> None:
    """Train the UniHOPE model from the shards; evaluates on the held-out split at the end."""
    from storage.manifest import StoreError
    from unihope.training import run_training_from_cli, run_training_in_runs_dir

    if (out is None) == (runs_dir is None):
        _fail("give exactly one of --out (a run folder) and --runs-dir (one run folder per dataset version)")
    try:
        if out is not None:
            run_training_from_cli(config_path=config, data_url=data, out_dir=out, mano_dir=mano_dir)
        else:
            run_training_in_runs_dir(config_path=config, data_url=data, runs_dir=runs_dir, mano_dir=mano_dir)
    except StoreError as err:  # a damaged or missing dataset: one line, not a traceback
        _fail(f"cannot read the dataset: {err}")
    except ValueError as err:
        _fail(str(err))


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Option(..., help="A checkpoint written by `unihope train`."),
    data: str = typer.Option(..., help="Dataset path or URL."),
    out: Path = typer.Option(..., help="Folder for metrics JSON and plots."),
    config: Path = typer.Option(Path("configs/train_demo.yaml"), help="Training config the checkpoint used."),
    mano_dir: Optional[Path] = typer.Option(
        None, help="Folder with the MANO_RIGHT.pkl / MANO_LEFT.pkl the dataset was built with (overrides hand.mano_dir)."),
) -> None:
    """Evaluate a checkpoint: MPJPE, PA-MPJPE, MPVPE, ADD-S, switcher accuracy, occlusion table."""
    from storage.manifest import StoreError
    from unihope.training import run_evaluation_from_cli

    try:
        run_evaluation_from_cli(config_path=config, checkpoint_path=checkpoint, data_url=data, out_dir=out,
                                mano_dir=mano_dir)
    except StoreError as err:
        _fail(f"cannot read the dataset: {err}")
    except ValueError as err:
        _fail(str(err))


@app.command()
def report(
    data: str = typer.Option(..., help="Dataset path or URL."),
    out: Path = typer.Option(..., help="Folder for index.html and PNGs."),
) -> None:
    """Write an HTML report: contact sheets, histograms, skip table (every shard's checksums are checked)."""
    from storage.manifest import StoreError
    from unihope.report import write_report

    try:
        path = write_report(data_url=data, out_dir=out)
    except StoreError as err:
        _fail(f"cannot read the dataset: {err}")
    typer.echo(f"report: {path}")


@app.command()
def deploy(
    config: Path = typer.Option(Path("configs/demo.yaml"), help="Pipeline config for the build deployment."),
    out: str = typer.Option(..., help="Dataset path or URL the scheduled builds write."),
    cron: str = typer.Option("0 3 * * *", help="Cron schedule of the build deployment."),
    train_config: Path = typer.Option(Path("configs/train_demo.yaml"), help="Training config."),
    train_out: Path = typer.Option(Path("runs/scheduled"), help="Root of the triggered trainings' run folders "
                                   "(<dataset version>-<config digest>/ per build)."),
) -> None:
    """Serve the build-dataset (cron) and train (triggered on build completion) deployments."""
    from flows.deploy import serve_deployments

    serve_deployments(config_path=config, out=out, cron=cron, train_config_path=train_config, train_out=train_out)


@app.command()
def demo(out: Path = typer.Option(Path("demo_out"), help="Folder for everything the demo writes.")) -> None:
    """The whole DAG on the synthetic source, then a short training run and the report."""
    from unihope.demo import run_demo

    run_demo(out_dir=out)


@app.command("ls-versions")
def ls_versions(data: str = typer.Option(..., help="Dataset path or URL.")) -> None:
    """List the dataset's committed versions, newest first: id, created, samples, shards, pins."""
    from storage.manifest import StoreError
    from storage.versions import list_versions

    try:
        rows = list_versions(data)
    except StoreError as err:
        _fail(str(err))
    if not rows:
        _fail(f"{data}: no committed dataset version")
    typer.echo(f"{'version':<18}{'seq':>5}  {'created (UTC)':<22}{'samples':>9}{'shards':>8}  pinned by")
    for row in rows:
        mark = "*" if row.is_current else " "
        typer.echo(f"{mark}{row.version_id:<17}{row.seq:>5}  {row.created_utc:<22}{row.num_samples:>9}"
                   f"{row.num_shards:>8}  {', '.join(row.pinned_by) or '-'}")


@app.command("gc")
def gc_versions(
    data: str = typer.Option(..., help="Dataset path or URL."),
    keep: int = typer.Option(2, help="Keep this many of the newest versions (pinned ones are always kept)."),
) -> None:
    """Remove old dataset versions and the shard folders only they referenced."""
    from storage.manifest import StoreError
    from storage.versions import gc

    try:
        result = gc(data, keep=keep)
    except (StoreError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"removed {len(result.removed_versions)} version(s) {list(result.removed_versions)}, "
               f"{len(result.removed_folders)} shard folder(s), {len(result.removed_pins)} stale pin(s); "
               f"kept {list(result.kept_versions)}")


@app.command("export-unihope")
def export_unihope(
    data: str = typer.Option(..., help="Dataset path or URL written by `unihope build` (DexYCB)."),
    split: str = typer.Option("s0", help="DexYCB setup: s0 | s1 | s2 | s3."),
    out: Path = typer.Option(..., help="Folder for UniHOPE's dex_ycb_*_data.json, grasp_*.npy, hand_occ_*.npy."),
    dexycb_root: Optional[Path] = typer.Option(None, help="The DexYCB tree (default: the dataset's source.root)."),
    version: Optional[str] = typer.Option(None, help="Dataset version id (default: the newest)."),
) -> None:
    """Write the label files the released UniHOPE loader reads for DexYCB, from a dataset version."""
    from storage.manifest import StoreError
    from unihope.export_unihope import export_unihope_labels

    try:
        summary = export_unihope_labels(data, split, out, dexycb_root=dexycb_root, version=version)
    except (StoreError, ValueError) as err:
        _fail(str(err))
    counts = ", ".join(f"{mode} {count}" for mode, count in summary.num_by_mode.items())
    typer.echo(f"version {summary.version_id}: {counts} samples -> {summary.out_dir}")


if __name__ == "__main__":
    app()
