"""`make demo`: the whole DAG on the synthetic source, a short training run, and the report.

An entry point like the CLI: it resolves paths once and calls the flows; it holds no stage logic.
"""

from __future__ import annotations

import time
from pathlib import Path

# The shipped configs: `unihope/configs` links to the top-level configs/ in a checkout and is package
# data in a wheel, so the command's defaults work from any folder and any install.
SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEMO_CONFIG = SHIPPED_CONFIG_DIR / "demo.yaml"
DEMO_TRAIN_CONFIG = SHIPPED_CONFIG_DIR / "train_demo.yaml"
HAND_PREVIEW_FRAMES = 8


def run_demo(out_dir: Path) -> Path:
    """Run the demo end to end and return the report's path.

    Steps: (1) render the hand model through a grasp motion (a look at the hand in use),
    (2) build the dataset with the `build_dataset` flow (synthesize, grasp labels, annotate,
    de-occlude, pack, finalize, report), (3) train briefly and evaluate on the held-out split.
    """
    from unihope.buildplan.resolve import mano_dir_parameter, resolve_build_config
    from unihope.launch import run_build
    from unihope.flows.train import train_flow
    from unihope.config import PipelineConfig
    from unihope.hand.preview import render_grasp_preview
    from unihope.prefect_server import own_api_server

    # One API server for the build and the training, in its own session and ending with this process
    # on any signal or error (Prefect's own ephemeral server, in the demo's process group, outlived a kill).
    with own_api_server():
        out_dir = Path(out_dir).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        start_s = time.perf_counter()

        # 1. The hand model in use, posed through a short grasp.
        previews = render_grasp_preview(out_dir / "hand_preview", num_frames=HAND_PREVIEW_FRAMES)
        print(f"[demo] hand model: {len(previews)} preview frames in {out_dir / 'hand_preview'}")

        # 2. The build DAG on the synthetic source.
        data_url = str(out_dir / "dataset")
        cfg = resolve_build_config(PipelineConfig.from_yaml(DEMO_CONFIG), data_url)
        summary = run_build(cfg, data_url, write_report=True)
        for line in summary.describe():
            print(f"[demo] {line}")

        # 3. A short training run on the shards, evaluated on the held-out sequences.
        train_dir = Path(train_flow(data_url=data_url, train_config_path=str(DEMO_TRAIN_CONFIG),
                                    runs_dir=str(out_dir / "train"), mano_dir=mano_dir_parameter(cfg)))
        print(f"[demo] training metrics: {train_dir / 'metrics.json'}")

        report_path = Path(summary.report_path) if getattr(summary, "report_path", None) else out_dir / "dataset" / "report"
        print(f"[demo] finished in {time.perf_counter() - start_s:.0f} s")
        print(f"[demo] report: {report_path}")
        return report_path
