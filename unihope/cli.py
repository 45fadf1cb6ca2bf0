"""The `unihope` command: each subcommand parses its arguments and calls one function."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from unihope.demo import DEMO_CONFIG, DEMO_TRAIN_CONFIG

# -h as well as --help, on the command and on every subcommand (click's context setting, inherited)
class _Command(typer.core.TyperCommand):
    """A subcommand whose switches (flags) show no type in --help: typer writes `<bool>` there, which
    reads as if the switch took a value (`--train <bool>`); a switch's name says all."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # typer shows the metavar instead of the type; empty = nothing
        return params


class _Group(typer.core.TyperGroup, _Command):
    """The `unihope` group itself: -h and --version without a type column, like every subcommand."""


# -h as well as --help, on the command and on every subcommand (click's context setting, inherited)
app = typer.Typer(add_completion=False, no_args_is_help=True, help="UniHOPE data generation and training.",
                  context_settings={"help_option_names": ["-h", "--help"]}, cls=_Group)

DISTRIBUTION = "unihope-datagen"
SET_HELP = "Override a config field: --set section.field=value (YAML scalar; repeatable; validated by the config)."


class LayoutFormat(str, enum.Enum):
    dexycb = "dexycb"
    ho3d = "ho3d"


class RenderPlatform(str, enum.Enum):
    egl = "egl"
    osmesa = "osmesa"


class DexYCBSetup(str, enum.Enum):
    s0 = "s0"
    s1 = "s1"
    s2 = "s2"
    s3 = "s3"


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def _user_errors(command: str) -> Iterator[None]:
    """Turn the errors a user can act on into one line and exit 2 (never a traceback).

    ValueError covers ConfigError and PreflightError; StoreError is a missing or damaged dataset;
    an OSError is a file that is missing, unreadable or on a full / read-only disk.
    """
    from unihope.storage.manifest import StoreError
    from unihope.preflight import describe_os_error

    try:
        yield
    except StoreError as err:
        _fail(f"{command}: cannot read the dataset: {err}")
    except ValueError as err:
        message = str(err).replace("\n", ";")  # a config with several problems still reads as one line
        _fail(message if message.startswith(command) else f"{command}: {message}")
    except OSError as err:
        _fail(f"{command}: {describe_os_error(err)}")


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"unihope {version(DISTRIBUTION)}")
        except PackageNotFoundError:  # run from a checkout that is not installed
            typer.echo("unihope (not installed: no package metadata)")
        raise typer.Exit()


@app.callback()
def main(
    show_version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                      help="Print the installed unihope-datagen version and exit."),
) -> None:
    """UniHOPE data generation and training."""
    from unihope.prefect_env import apply_prefect_env_defaults

    apply_prefect_env_defaults()  # before any command imports Prefect; the user's own settings win


@app.command(cls=_Command)
def inspect(
    mano_dir: Optional[Path] = typer.Option(None, help="Folder with the official MANO_RIGHT.pkl / MANO_LEFT.pkl."),
    render_platform: RenderPlatform = typer.Option(RenderPlatform.egl, help="Offscreen OpenGL platform."),
) -> None:
    """Show what is installed, which hand model and which renderer are in use."""
    import pickle

    from unihope.inspect_env import describe_environment

    try:
        with _user_errors("inspect"):
            lines = list(describe_environment(mano_dir=mano_dir, render_platform=render_platform.value))
    except pickle.UnpicklingError as err:  # e.g. a MANO pickle that names code
        _fail(f"inspect: {err}")
    for line in lines:
        typer.echo(line)


@app.command("convert-mano", cls=_Command)
def convert_mano(src: Path, dst: Path) -> None:
    """Convert an official chumpy-based MANO pickle to plain numpy (no chumpy needed)."""
    import pickle

    from unihope.hand.convert import convert_official_mano

    try:
        with _user_errors("convert-mano"):
            convert_official_mano(src, dst)
    except pickle.UnpicklingError as err:
        _fail(f"convert-mano: {err}")
    typer.echo(f"wrote {dst}")


@app.command(cls=_Command)
def synth(
    out: Path = typer.Option(..., help="Output folder for the synthetic dataset."),
    format: LayoutFormat = typer.Option(LayoutFormat.dexycb, help="On-disk layout to write."),
    sequences: int = typer.Option(4, help="Number of sequences."),
    frames: int = typer.Option(24, help="Frames per sequence."),
    cameras: int = typer.Option(2, help="Cameras per sequence (DexYCB format)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write a small synthetic dataset in DexYCB's (or HO3D_v2's) exact on-disk layout."""
    from pydantic import ValidationError

    from unihope.config import ConfigError, HandModelConfig, SyntheticConfig, describe_validation_error
    from unihope.sources.synthetic import write_synthetic_dataset

    try:
        cfg = SyntheticConfig(
            format=format.value, num_sequences=sequences, frames_per_sequence=frames, num_cameras=cameras, seed=seed
        )
    except ValidationError as err:
        _fail(describe_validation_error("synth", err).replace("\n", ";"))
    except (ValueError, ConfigError) as err:
        _fail(f"synth: {err}")
    with _user_errors("synth"):
        summary = write_synthetic_dataset(out, cfg, HandModelConfig())
    typer.echo(summary.describe())


@app.command(cls=_Command)
def build(
    config: Path = typer.Option(DEMO_CONFIG, help="Pipeline config (YAML)."),
    source: Optional[str] = typer.Option(None, help="synthetic | dexycb:PATH | ho3d:PATH (overrides the config)."),
    out: str = typer.Option(..., help="Output dataset path or fsspec URL."),
    train: bool = typer.Option(False, "--train", help="Train on the dataset when the build finishes."),
    train_config: Path = typer.Option(DEMO_TRAIN_CONFIG, help="Training config for --train."),
    train_out: Optional[Path] = typer.Option(
        None, help="Root of --train's run folders (<dataset version>-<config digest>/ each); default runs/<name>."),
    wait_lock: bool = typer.Option(False, "--wait-lock", help="Wait for another build of --out to finish instead of refusing."),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=SET_HELP + " Applies to the pipeline config."),
    train_overrides: list[str] = typer.Option([], "--train-set", metavar="KEY=VALUE", help="As --set, for --train's training config."),
) -> None:
    """Run the build_dataset flow: source -> grasp -> annotate -> de-occlude -> pack -> finalize."""
    from unihope.build_cli import run_build_from_cli
    from unihope.rich_progress import terminal_progress

    with terminal_progress():  # stage bars on a terminal; plain log lines always
        run_build_from_cli(config_path=config, source=source, out=out, train=train, train_config_path=train_config,
                           train_out=train_out, wait_lock=wait_lock, overrides=tuple(overrides),
                           train_overrides=tuple(train_overrides))


@app.command(cls=_Command)
def train(
    config: Path = typer.Option(DEMO_TRAIN_CONFIG, help="Training config (YAML)."),
    data: str = typer.Option(..., help="Dataset path or URL written by `unihope build`."),
    out: Optional[Path] = typer.Option(None, help="Run folder: checkpoints, metrics.json, plots."),
    runs_dir: Optional[Path] = typer.Option(
        None, help="Instead of --out: train in <runs-dir>/<dataset version>-<config digest>/ (as `build --train`)."),
    mano_dir: Optional[Path] = typer.Option(
        None, help="Folder with the MANO_RIGHT.pkl / MANO_LEFT.pkl the dataset was built with (overrides hand.mano_dir)."),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=SET_HELP),
) -> None:
    """Train the UniHOPE model from the shards; evaluates on the held-out split at the end."""
    from unihope.storage.manifest import StoreError
    from unihope.train.run import load_train_config, run_training_from_cli, run_training_in_runs_dir

    if (out is None) == (runs_dir is None):
        _fail("give exactly one of --out (a run folder) and --runs-dir (one run folder per dataset version)")
    try:
        load_train_config(config, tuple(overrides))  # a bad config or override fails before the data is opened
        if out is not None:
            run_training_from_cli(config_path=config, data_url=data, out_dir=out, mano_dir=mano_dir,
                                  overrides=tuple(overrides))
        else:
            run_training_in_runs_dir(config_path=config, data_url=data, runs_dir=runs_dir, mano_dir=mano_dir,
                                     overrides=tuple(overrides))
    except StoreError as err:  # a damaged or missing dataset: one line, not a traceback
        _fail(f"cannot read the dataset: {err}")
    except ValueError as err:
        _fail(str(err))


@app.command("train-deoccluder", cls=_Command)
def train_deoccluder(
    config: Path = typer.Option(..., help="De-occluder training config (YAML), e.g. configs/deoccluder_tiny.yaml."),
    out: Path = typer.Option(..., help="Output folder: base/, controlnet/, checkpoints/, training.json, README.md."),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=SET_HELP),
) -> None:
    """Train a ControlNet de-occluder on synthetic object-free pairs; prints the --set options for `unihope build`."""
    from unihope.train.deoccluder import load_deoccluder_config, train_deoccluder as run

    with _user_errors("train-deoccluder"):
        cfg = load_deoccluder_config(config, tuple(overrides))
        result = run(cfg, out, log=typer.echo)
    typer.echo(f"trained in {result.wall_s:.0f} s on {result.dataset_version} ({result.num_train_pairs} pairs) -> {out}")
    typer.echo("build with it (also in " + str(out / "README.md") + "):")
    typer.echo(" ".join(f"--set {option}" for option in result.build_overrides))


@app.command("eval", cls=_Command)
def evaluate(
    checkpoint: Path = typer.Option(..., help="A checkpoint written by `unihope train`."),
    data: str = typer.Option(..., help="Dataset path or URL."),
    out: Path = typer.Option(..., help="Folder for metrics JSON and plots."),
    config: Optional[Path] = typer.Option(
        None, help="Training config to evaluate with (default: the one the checkpoint records)."),
    mano_dir: Optional[Path] = typer.Option(
        None, help="Folder with the MANO_RIGHT.pkl / MANO_LEFT.pkl the dataset was built with (overrides hand.mano_dir)."),
) -> None:
    """Evaluate a checkpoint: MPJPE, PA-MPJPE, MPVPE, ADD-S, switcher accuracy, occlusion table."""
    from unihope.storage.manifest import StoreError
    from unihope.train.run import run_evaluation_from_cli

    try:
        run_evaluation_from_cli(config_path=config, checkpoint_path=checkpoint, data_url=data, out_dir=out,
                                mano_dir=mano_dir)
    except StoreError as err:
        _fail(f"cannot read the dataset: {err}")
    except ValueError as err:
        _fail(str(err))


@app.command(cls=_Command)
def report(
    data: str = typer.Option(..., help="Dataset path or URL."),
    out: Path = typer.Option(..., help="Folder for index.html and PNGs."),
) -> None:
    """Write an HTML report: contact sheets, histograms, skip table (every shard's checksums are checked)."""
    from unihope.storage.io import locate, read_bytes
    from unihope.storage.manifest import MANIFEST_NAME
    from unihope.report import write_report

    with _user_errors("report"):
        if read_bytes(locate(data), MANIFEST_NAME) is None:  # else an empty report of a dataset that is not there
            _fail(f"report: no finished dataset at {data} (no {MANIFEST_NAME}); run `unihope build --out {data}` first")
        path = write_report(data_url=data, out_dir=out)
    typer.echo(f"report: {path}")


@app.command(cls=_Command)
def deploy(
    config: Path = typer.Option(DEMO_CONFIG, help="Pipeline config for the build deployment."),
    out: str = typer.Option(..., help="Dataset path or URL the scheduled builds write."),
    cron: str = typer.Option("0 3 * * *", help="Cron schedule of the build deployment."),
    train_config: Path = typer.Option(DEMO_TRAIN_CONFIG, help="Training config."),
    train_out: Path = typer.Option(Path("runs/scheduled"), help="Root of the triggered trainings' run folders "
                                   "(<dataset version>-<config digest>/ per build)."),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                        help=SET_HELP + " Applies to every scheduled build's pipeline config."),
    train_overrides: list[str] = typer.Option([], "--train-set", metavar="KEY=VALUE",
                                              help="As --set, for the triggered trainings' config."),
) -> None:
    """Serve the build-dataset (cron) and train (triggered on build completion) deployments."""
    from unihope.flows.deploy import serve_deployments

    with _user_errors("deploy"):
        serve_deployments(config_path=config, out=out, cron=cron, train_config_path=train_config, train_out=train_out,
                          overrides=tuple(overrides), train_overrides=tuple(train_overrides))


@app.command(cls=_Command)
def demo(out: Path = typer.Option(Path("demo_out"), help="Folder for everything the demo writes.")) -> None:
    """The whole DAG on the synthetic source, then a short training run and the report."""
    from unihope.demo import run_demo

    from unihope.rich_progress import terminal_progress

    with _user_errors("demo"), terminal_progress():
        run_demo(out_dir=out)


@app.command("ls-versions", cls=_Command)
def ls_versions(data: str = typer.Option(..., help="Dataset path or URL.")) -> None:
    """List the dataset's committed versions, newest first: id, created, samples, shards, pins."""
    from unihope.storage.versions import list_versions

    with _user_errors("ls-versions"):
        rows = list_versions(data)
    if not rows:
        _fail(f"{data}: no committed dataset version")
    typer.echo(f"{'version':<18}{'seq':>5}  {'created (UTC)':<22}{'samples':>9}{'shards':>8}  pinned by")
    for row in rows:
        mark = "*" if row.is_current else " "
        typer.echo(f"{mark}{row.version_id:<17}{row.seq:>5}  {row.created_utc:<22}{row.num_samples:>9}"
                   f"{row.num_shards:>8}  {', '.join(row.pinned_by) or '-'}")


@app.command("gc", cls=_Command)
def gc_versions(
    data: str = typer.Option(..., help="Dataset path or URL."),
    keep: int = typer.Option(2, help="Keep this many of the newest versions (pinned ones are always kept)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; remove nothing."),
) -> None:
    """Remove old dataset versions and the shard folders only they referenced."""
    from unihope.storage.versions import gc

    with _user_errors("gc"):
        result = gc(data, keep=keep, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(result.removed_versions)} version(s) {list(result.removed_versions)}, "
               f"{len(result.removed_folders)} shard folder(s), {len(result.removed_pins)} stale pin(s); "
               f"{'would keep' if dry_run else 'kept'} {list(result.kept_versions)}")
    if dry_run:
        for folder in result.removed_folders:
            typer.echo(f"  would remove {folder}")


@app.command("export-unihope", cls=_Command)
def export_unihope(
    data: str = typer.Option(..., help="Dataset path or URL written by `unihope build` (DexYCB)."),
    split: DexYCBSetup = typer.Option(DexYCBSetup.s0, help="DexYCB setup."),
    out: Path = typer.Option(..., help="UniHOPE's dataset_root: dex_ycb_*_data.json, grasp_*.npy, hand_occ_*.npy, "
                                       "object_render/ masks, models/*/points.xyz (the DexYCB root itself works)."),
    dexycb_root: Optional[Path] = typer.Option(None, help="The DexYCB tree (default: the dataset's source.root)."),
    version: Optional[str] = typer.Option(None, help="Dataset version id (default: the newest)."),
) -> None:
    """Write the label files the released UniHOPE loader reads for DexYCB, from a dataset version."""
    from unihope.export_unihope import export_unihope_labels

    with _user_errors("export-unihope"):
        summary = export_unihope_labels(data, split.value, out, dexycb_root=dexycb_root, version=version)
    counts = ", ".join(f"{mode} {count}" for mode, count in summary.num_by_mode.items())
    typer.echo(f"version {summary.version_id}: {counts} samples -> {summary.out_dir} "
               f"({summary.num_masks_written} object masks written)")
    if summary.placeholder_models:
        typer.echo(f"models/*/points.xyz: one-point placeholders for objects the tree lacks: "
                   f"{', '.join(summary.placeholder_models)}")


if __name__ == "__main__":
    app()
