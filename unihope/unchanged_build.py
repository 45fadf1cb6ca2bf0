"""Is a build already done? The stored summary of an unchanged build, found without Prefect or any stage import.

A nightly rerun that finds nothing new should cost the interpreter and a few file reads: the CLI asks
here first and, when the answer is a summary, prints it and starts no server and no flow.
"""

from __future__ import annotations

import json

from unihope.buildplan.output_items import reuse_finalized
from unihope.buildplan.resolve import default_report_dir
from unihope.buildplan.workdir import make_layout
from unihope.config import PipelineConfig


def unchanged_build_summary(cfg: PipelineConfig, out: str, write_report: bool = True):
    """The `DatasetSummary` a build of `cfg` into `out` would return by reusing every stage, or None.

    Unchanged means what the flow itself would find: the output last received this config's pack
    hash (`output.json`), and that hash was finalized for the output's newest version with its report
    in place (`unihope.buildplan.output_items.reuse_finalized`). The flow reuses every stage item
    then, so the dataset, its summary and its report are the ones stored. A config change anywhere
    upstream changes the pack hash; a new version of the output (another build) changes the version.

    Args:
        cfg: resolved pipeline config (`unihope.buildplan.resolve.resolve_build_config`).
        out: dataset path or URL.
        write_report: whether the build would write the HTML report (then it must exist).

    Returns:
        `unihope.report.DatasetSummary`, or None when the build has work to do.
    """
    layout = make_layout(cfg, out)
    state_path = layout.output_state_path
    if not state_path.is_file():
        return None
    if json.loads(state_path.read_text()) != {"url": out, "pack_hash": layout.hashes.pack}:
        return None
    return reuse_finalized(layout, out, default_report_dir(out, layout) if write_report else None)
