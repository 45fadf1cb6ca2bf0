"""Work files (issue 15.3 / 14.1): grasp parts and de-occlusion results are unihope.storage.batches files, never pickles."""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from unihope.storage.schema import DeocclusionResult, GraspLabel, Skip, SkipReason
from storage_fixtures import make_annotated, make_batch, make_keys
from unihope.buildplan.hashes import StageHashes
from unihope.buildplan.workdir import WorkLayout
from unihope.buildplan.workfiles import GraspPartOutput, load_grasp_part, load_results, save_grasp_part, save_results


def _assert_same(loaded, expected) -> None:
    """Same type, every array equal in dtype, shape and values (NaN == NaN), every other field equal and of one type."""
    assert type(loaded) is type(expected)
    for field in dataclasses.fields(expected):
        got, want = getattr(loaded, field.name), getattr(expected, field.name)
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, field.name
            np.testing.assert_array_equal(got, want, err_msg=field.name)
        elif isinstance(want, float) and math.isnan(want):
            assert isinstance(got, float) and math.isnan(got), field.name
        else:
            assert type(got) is type(want) and got == want, field.name


def _layout(root: Path) -> WorkLayout:
    return WorkLayout(root=root, hashes=StageHashes(*(f"{stage}hash" for stage in ("s", "g", "a", "d", "p"))))


def test_grasp_part_round_trip_keeps_every_field(tmp_path: Path) -> None:
    frames = [make_annotated(key, 32) for key in make_keys(1, 3)]
    records = [frames[0].frame,  # no grasp reference pose (None) next to frames that have one
               dataclasses.replace(frames[1].frame, grasp_reference_pose=np.eye(3, 4, dtype=np.float32),
                                   grasp_reference_key=frames[0].frame.sample_key),
               dataclasses.replace(frames[2].frame, grasp_reference_pose=np.full((3, 4), np.nan, np.float32))]
    grasps = [GraspLabel(r.sample_key, rre_deg=1.5, rte_m=float("nan"), is_grasping=i % 2 == 0,
                         reference_key=records[0].sample_key, source="override" if i else "rule")
              for i, r in enumerate(records)]
    skips = [Skip("s/q/0/000009", "source", SkipReason.CORRUPT_FILE, "bad jpeg"), Skip("s/q/0/000010", "source",
                                                                                       SkipReason.MISSING_FILE)]
    assert records[0].grasp_reference_pose is None
    path = _layout(tmp_path).grasp_part_path(0)
    save_grasp_part(path, GraspPartOutput(tuple(records), tuple(grasps), tuple(skips)))

    part = load_grasp_part(path)
    assert path.suffix == ".npz" and [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file
    assert len(part.records) == 3 and len(part.grasps) == 3 and len(part.skips) == 2
    for loaded, expected in zip(part.records + part.grasps + part.skips, records + grasps + skips):
        _assert_same(loaded, expected)
    assert part.records[0].grasp_reference_pose is None and part.records[1].image_size_wh == (640, 480)
    assert type(part.skips[0].reason) is SkipReason  # an enum again, not its string


def test_results_round_trip_keeps_nan_and_empty_parts(tmp_path: Path) -> None:
    annotated, results = make_batch(make_keys(1, 4), every_nth_without_result=100)
    results[1] = dataclasses.replace(results[1], beta=float("nan"), original_pose_error=0.25,
                                     candidate_scores=np.array([np.nan, 0.5, np.inf], np.float32), num_unet_evals=7)
    path = _layout(tmp_path).deocclude_results_path(3)
    save_results(path, results)
    loaded = load_results(path)
    assert len(loaded) == 4
    for got, want in zip(loaded, results):
        _assert_same(got, want)
    # an empty part (every frame skipped) round-trips too
    save_grasp_part(tmp_path / "empty.npz", GraspPartOutput((), (), ()))
    assert load_grasp_part(tmp_path / "empty.npz") == GraspPartOutput((), (), ())


class _Payload:
    """Unpickling this object runs `exec`, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_pickle_planted_as_a_work_file_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = pickle.dumps(_Payload(marker))
    pickle.loads(evil)  # the payload really runs under a plain unpickler ...
    assert marker.exists()
    marker.unlink()

    layout = _layout(tmp_path / "work")
    # ... but not from where a work file goes: a bare pickle, and one inside an npz (an object array)
    object_npz = io.BytesIO()
    np.savez(object_npz, __meta__=np.array([_Payload(marker)], dtype=object))
    for payload in (evil, object_npz.getvalue()):
        for path, load in ((layout.grasp_part_path(0), load_grasp_part), (layout.deocclude_results_path(0), load_results)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload)
            with pytest.raises(ValueError, match="not a work file written by unihope.storage.batches.save_records.*delete it"):
                load(path)
    assert not marker.exists()


def test_a_work_file_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    from unihope.storage.batches import save_batch

    annotated, results = make_batch(make_keys(1, 2), every_nth_without_result=100)
    save_results(tmp_path / "results.npz", results)
    with pytest.raises(ValueError, match="not a grasp part file"):
        load_grasp_part(tmp_path / "results.npz")
    save_batch(tmp_path / "batch.npz", annotated, results)  # an annotate batch is not a results file
    with pytest.raises(ValueError, match="not a work file"):
        load_results(tmp_path / "batch.npz")
    assert isinstance(load_results(tmp_path / "results.npz")[0], DeocclusionResult)


def test_execution_log_refuses_an_unknown_stage(tmp_path):
    """A stage name the hashes do not know raises (it used to be logged silently under the pack hash)."""
    from unihope.buildplan.workfiles import read_executions, record_execution

    layout = _layout(tmp_path)
    record_execution(layout, "index", 0, 10, 0.5)
    record_execution(layout, "finalize", 0, 10, 0.5)
    with pytest.raises(ValueError, match="unknown stage 'source'"):
        record_execution(layout, "source", 0, 10, 0.5)
    assert [(e["stage"], e["hash"]) for e in read_executions(tmp_path)] == [("index", "shash"), ("finalize", "phash")]
