"""Dataset summary and HTML report on a small dataset with known visibilities, betas and skips."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import numpy as np
import pytest

from unihope.storage.schema import Skip, SkipReason
from storage_fixtures import STORAGE_ATTRS, make_annotated, make_keys, make_result
from unihope.config import StorageConfig
from unihope.report import (
    BETA_BIN_EDGES, DatasetSummary, pick_contact_indices, summarize_dataset, write_report,
)

VISIBILITIES = [0.05 + 0.1 * i for i in range(10)]  # one sample per visibility bin
KEPT_BETAS = {0: 0.45, 1: 0.55, 2: 0.55, 3: 0.75}  # samples 0-3 keep their pair
NO_RESULT = 9  # sample 9 has no de-occlusion result
SKIPS = [
    Skip("s/a/1/000100", "source", SkipReason.MISSING_FILE, "color_000100.jpg"),
    Skip("s/a/1/000101", "annotate", SkipReason.HAND_OUTSIDE_IMAGE, "box 3% inside"),
    Skip("s/a/1/000102", "annotate", SkipReason.HAND_OUTSIDE_IMAGE, "box 1% inside"),
]


def fixture_samples():
    """The dataset's annotated frames and de-occlusion results (deterministic in the keys)."""
    annotated, results = [], []
    for i, key in enumerate(make_keys(2, 5)):
        frame = make_annotated(key, crop_size_px=32, visibility=VISIBILITIES[i])
        annotated.append(frame)
        if i == NO_RESULT:
            results.append(None)
        else:
            result = make_result(frame, keep=i in KEPT_BETAS)
            results.append(dataclasses.replace(result, beta=KEPT_BETAS.get(i, 0.9)))
    return annotated, results


@pytest.fixture(scope="module")
def dataset_url(tmp_path_factory) -> str:
    from unihope.storage.writer import finalize, write_shard

    url = str(tmp_path_factory.mktemp("report") / "data")
    annotated, results = fixture_samples()
    cfg = StorageConfig(shard_size=6)
    write_shard(url, 0, annotated[:6], results[:6], STORAGE_ATTRS, cfg)
    write_shard(url, 1, annotated[6:], results[6:], STORAGE_ATTRS, cfg)
    finalize(url, STORAGE_ATTRS, SKIPS)
    return url


def test_summary_counts_what_the_dataset_holds(dataset_url):
    summary = summarize_dataset(dataset_url)
    assert summary.num_samples == 10 and summary.num_shards == 2
    assert summary.num_frames_seen == 13
    assert summary.num_pairs_kept == 4
    assert summary.skips_by_reason == {"hand_outside_image": 2, "missing_file": 1}
    assert summary.skips_by_stage == {"annotate": 2, "source": 1}
    assert summary.visibility_counts == (1,) * 10
    assert summary.occlusion_bin_counts == (2, 3, 2, 3)  # min(3, int(4 * vis)) as the fixture bins it
    expected_beta = [0] * (len(BETA_BIN_EDGES) - 1)
    expected_beta[4], expected_beta[5], expected_beta[7] = 1, 2, 1  # 0.45 | 0.55 0.55 | 0.75
    assert summary.beta_counts == tuple(expected_beta)
    assert summary.deocclusion_reasons["kept"] == 4
    assert summary.skip_examples["missing_file"] == ["s/a/1/000100 (source: color_000100.jpg)"]
    assert DatasetSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary
    text = "\n".join(summary.describe())
    assert "frames seen 13, skipped 3, kept pairs 4" in text
    # how many pairs each keep rule would keep, at the build's thresholds (defaults here: 0.9, margin 0)
    _, results = fixture_samples()
    gains = [r is not None and r.deocclusion_score > r.original_score for r in results]
    occluded = [v <= 0.9 for v in VISIBILITIES]
    generated = [r is not None for r in results]
    expected = {
        "score": sum(gains), "occ": sum(o and g for o, g in zip(occluded, generated)),
        "and": sum((s or o) and g for s, o, g in zip(gains, occluded, generated)),
        "or": sum(s and o for s, o in zip(gains, occluded)), "all": sum(generated), "none": 0,
    }  # fmt: skip
    assert summary.pairs_by_rule == expected and summary.keep_rule == "occ" and summary.num_generated == 9
    assert 0 < expected["score"] < expected["occ"] == 9  # the fixture separates the rules
    assert f"keep rules (pairs each would keep of 9 generated; in use: occ): score {expected['score']}" in text
    assert "[0.5, 0.6)      2 " in text


def test_contact_selection_puts_kept_pairs_first():
    keep = np.array([False, True, False, True, False, False, True, False])
    visibility = np.array([0.9, 0.6, 0.8, 0.2, 0.7, 0.5, 0.4, 0.3])
    assert pick_contact_indices(keep, visibility, max_rows=6) == [3, 6, 1, 0, 4, 7]
    assert pick_contact_indices(keep, visibility, max_rows=2) == [3, 0]
    assert pick_contact_indices(np.zeros(0, bool), np.zeros(0), max_rows=4) == []


def test_report_writes_page_figures_and_skip_table(dataset_url, tmp_path):
    import matplotlib.image

    index = write_report(data_url=dataset_url, out_dir=tmp_path / "report")
    page = index.read_text()
    assert index == tmp_path / "report" / "index.html"
    for needle in ("contact_sheet.png", "histograms.png", "hand_outside_image", "missing_file",
                   "s/a/1/000101 (annotate: box 3% inside)", "<th>kept pairs</th><td>4</td>",
                   "<td>occ (in use)</td><td>keeps a pair whose hand is occluded enough (visibility &lt;= "
                   "max_visibility)</td><td>9</td>",
                   "<td>[0, .25]</td>", "<th>version</th>", "<summary>the build's resolved config"):
        assert needle in page, needle
    assert "<tr><th></th><th></th></tr>" not in page and "<th></th><th>value</th>" not in page  # no empty header
    sheet = matplotlib.image.imread(tmp_path / "report" / "contact_sheet.png")
    assert sheet.shape[0] == round(2.1 * 10 * 80)  # one 2.1-inch row per sample at 80 dpi
    assert matplotlib.image.imread(tmp_path / "report" / "histograms.png").shape[:2] == (240, 960)
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["num_pairs_kept"] == 4


def test_summary_names_version_grasps_and_report(dataset_url):
    from unihope.storage.view import open_dataset

    summary = summarize_dataset(dataset_url)
    view = open_dataset(dataset_url)
    grasp, bins = view.column("grasp").astype(bool), view.column("occlusion_bin")
    assert summary.version_id == view.version_id != ""
    assert summary.grasp_counts_by_bin == tuple((int(((bins == b) & ~grasp).sum()), int(((bins == b) & grasp).sum()))
                                                for b in range(4))
    assert 0 < sum(g for _, g in summary.grasp_counts_by_bin) < summary.num_samples  # both kinds in the fixture
    lines = dataclasses.replace(summary, report_path="/r/index.html").describe()
    assert lines[0].startswith(f"dataset {dataset_url} version {summary.version_id}: 10 samples")
    assert lines[-1] == "report: /r/index.html"


def test_report_without_beta_explains_the_missing_plot(dataset_url, tmp_path):
    import matplotlib.image
    from unihope.report import _save_histograms

    summary = dataclasses.replace(summarize_dataset(dataset_url), beta_counts=(0,) * (len(BETA_BIN_EDGES) - 1),
                                  deocclusion_backend="inpaint")
    _save_histograms(summary, tmp_path / "h.png")
    assert matplotlib.image.imread(tmp_path / "h.png").shape[:2] == (240, 640)  # two panels: no beta panel


def test_report_renders_in_a_headless_browser(dataset_url, tmp_path):
    """Chromium draws the page: its screenshot holds both figures pixel for pixel, and the contact sheet shows
    the joints (yellow skeleton) and a depth colour bar."""
    import cv2

    assert shutil.which("chromium"), "Debian's chromium is missing: `make system-deps` installs it"

    index = write_report(data_url=dataset_url, out_dir=tmp_path / "report")
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--force-device-scale-factor=1", f"--screenshot={shot}", "--window-size=1100,3200",
                    index.as_uri()], check=True, capture_output=True, timeout=120)
    page = cv2.imread(str(shot))
    assert page is not None and page.shape[:2] == (3200, 1100)
    tops = {}
    for name in ("histograms.png", "contact_sheet.png"):
        figure = cv2.imread(str(tmp_path / "report" / name))
        score, _, top_left, _ = cv2.minMaxLoc(cv2.matchTemplate(page, figure[:200], cv2.TM_SQDIFF_NORMED))
        assert score < 0.01, (name, score)  # drawn at its own size: the browser loaded and showed it
        tops[name] = top_left[1]
    assert tops["histograms.png"] < tops["contact_sheet.png"]  # sections in the page's order
    sheet = cv2.imread(str(tmp_path / "report" / "contact_sheet.png"))
    yellow = (sheet[..., 2] > 200) & (sheet[..., 1] > 200) & (sheet[..., 0] < 80)
    assert yellow[:, : sheet.shape[1] // 2].sum() > 100  # the skeleton over the two image columns
    viridis_end = np.abs(sheet.astype(int) - (36, 231, 253)).sum(axis=2) < 40  # a colour bar's yellow end (BGR)
    assert viridis_end[:, 3 * sheet.shape[1] // 4:].sum() > 20
