"""One schema drives the records: every record field has an array, stored fields round-trip, a new label needs one row."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from storage_fixtures import STORAGE_ATTRS, make_batch, make_keys
from unihope.config import StorageConfig
from unihope.storage.batch_buffer import SharedBatch
from unihope.storage.paired import PairedDataset
from unihope.storage.records import schema_problems
from unihope.storage.schema import (
    CHUNKING_COLUMN,
    SAMPLE_FIELDS,
    SCHEMA,
    AnnotatedFrame,
    ArraySpec,
    GraspLabel,
    TrainField,
)
from unihope.storage.view import open_dataset
from unihope.storage.writer import finalize, write_shard

CFG = StorageConfig(shard_size=4)
SCHEMA2_STORE = Path(__file__).parent / "data" / "schema2_store"


def test_every_record_field_has_an_array_and_every_array_a_field():
    assert schema_problems(SCHEMA) == []


def test_a_field_without_array_and_an_array_without_field_are_reported():
    with_label = dataclasses.make_dataclass(
        "GraspLabelWithContact", [("contact_distance_m", float, dataclasses.field(default=0.0))],
        bases=(GraspLabel,), frozen=True, slots=True)
    unstored_field = dataclasses.replace(SCHEMA, record_types={**SCHEMA.record_types, "grasp": with_label})
    assert any("'grasp.contact_distance_m' has no array" in p for p in schema_problems(unstored_field))

    orphan = ArraySpec("contact_distance_m", "float32", (), CHUNKING_COLUMN, "m", "a label", "grasp.contact_m")
    orphan_array = dataclasses.replace(SCHEMA, arrays=(*SCHEMA.arrays, orphan))
    assert any("'grasp.contact_m' is no record field" in p for p in schema_problems(orphan_array))


def _with_deocclusion_stats(results):
    """Results with every de-occlusion field set to a value no default has."""
    return [None if r is None else dataclasses.replace(r, num_unet_evals=40 + i, original_pose_error=0.5 + i,
                                                       deoccluded_pose_error=0.25 + i)
            for i, r in enumerate(results)]


def test_deocclusion_counts_and_pose_errors_are_stored(tmp_path):
    annotated, results = make_batch(make_keys(1, 3), crop_size_px=16)  # the third frame has no result
    results = _with_deocclusion_stats(results)
    write_shard(tmp_path, 0, annotated, results, STORAGE_ATTRS, CFG)
    finalize(tmp_path, STORAGE_ATTRS, [])
    view = open_dataset(tmp_path, verify="eager")
    for index, expected in enumerate(results):
        _, result = view.record(index)
        if expected is None:
            assert result is None
            continue
        assert (result.num_unet_evals, result.original_pose_error, result.deoccluded_pose_error) == (
            expected.num_unet_evals, expected.original_pose_error, expected.deoccluded_pose_error)
        assert type(result.num_unet_evals) is int and type(result.original_pose_error) is float
    assert view.column("num_unet_evals").tolist() == [40, 41, 0]
    assert np.isnan(view.column("deoccluded_pose_error")[2])


def test_a_schema_2_store_reads_with_documented_fills(tmp_path):
    store = tmp_path / "old"
    shutil.copytree(SCHEMA2_STORE, store)
    view = open_dataset(store, verify="eager")
    assert view.shards[0].schema_version == 2 and view.num_samples == 3
    assert view.column("num_unet_evals").tolist() == [0, 0, 0]
    assert np.isnan(view.column("original_pose_error")).all() and np.isnan(view.column("deoccluded_pose_error")).all()
    annotated, result = view.record(0)
    assert annotated.frame.sample_key == make_keys(1, 3)[0] and result.backend == "render"
    assert result.num_unet_evals == 0 and np.isnan(result.original_pose_error)
    expected_annotated, _ = make_batch(make_keys(1, 3), crop_size_px=16)
    np.testing.assert_array_equal(annotated.image, expected_annotated[0].image)
    batch = PairedDataset(store).load_batch([0, 1, 2])
    assert list(batch) == list(SAMPLE_FIELDS) and batch["image"].shape == (3, 3, 16, 16)


def test_a_batch_field_missing_from_the_declared_keys_raises():
    batch, _ = SharedBatch.allocate({"image": (np.float32, (1, 3)), "contact_distance_m": (np.float32, (1,))})
    with pytest.raises(KeyError, match=r"not declared \['contact_distance_m'\]"):
        batch.finish(key_order=("image",))


def test_adding_a_label_is_one_schema_row(tmp_path):
    """docs/ARCHITECTURE.md, "Adding a label": a record field and one ArraySpec row; writer and readers unchanged."""
    # 1. The record field (a copy of AnnotatedFrame with one more field, as the stage would fill it)
    frame_with_contact = dataclasses.make_dataclass(
        "AnnotatedFrameWithContact", [("contact_distance_m", float, dataclasses.field(default=float("nan")))],
        bases=(AnnotatedFrame,), frozen=True, slots=True)
    # 2. One schema row, marked for training
    row = ArraySpec("contact_distance_m", "float32", (), CHUNKING_COLUMN, "m", "hand-object contact distance",
                    "contact_distance_m", train=TrainField("float32", "m, hand-object contact distance"))
    schema = dataclasses.replace(SCHEMA, arrays=(*SCHEMA.arrays, row),
                                 record_types={**SCHEMA.record_types, "": frame_with_contact})
    assert schema_problems(schema) == []

    # 3. Written, read back as the record, and in every training batch
    annotated, results = make_batch(make_keys(1, 4), crop_size_px=16)
    distances = [0.004, 0.0125, 0.03, 0.0]
    annotated = [frame_with_contact(**{f.name: getattr(a, f.name) for f in dataclasses.fields(AnnotatedFrame)},
                                    contact_distance_m=d) for a, d in zip(annotated, distances)]
    write_shard(tmp_path, 0, annotated, results, STORAGE_ATTRS, CFG, schema=schema)
    finalize(tmp_path, STORAGE_ATTRS, [])
    view = open_dataset(tmp_path, verify="eager", schema=schema)
    for index, distance in enumerate(distances):
        rebuilt, _ = view.record(index)
        assert type(rebuilt) is frame_with_contact and rebuilt.contact_distance_m == np.float32(distance)
    batch = PairedDataset(tmp_path, schema=schema).load_batch([0, 1, 2, 3])
    assert list(batch) == list(schema.sample_fields) and "contact_distance_m" in batch
    assert batch["contact_distance_m"].dtype == torch.float32
    np.testing.assert_array_equal(batch["contact_distance_m"].numpy(), np.float32(distances))
