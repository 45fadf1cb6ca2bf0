"""DexYCB and HO3D split rules as data: which subjects, cameras and sequences a split holds.

DexYCB's four setups (dex-ycb-toolkit): s0 seen everything (sequences by index), s1 unseen subjects,
s2 unseen cameras, s3 unseen grasped objects. A sequence's index is its position in the sorted list
of its subject's sequence folders (upstream: 100 per subject, 5 per object, objects in YCB order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# The real DexYCB subject folders and camera serials, in dex-ycb-toolkit's order.
DEXYCB_SUBJECTS: tuple[str, ...] = (
    "20200709-subject-01",
    "20200813-subject-02",
    "20200820-subject-03",
    "20200903-subject-04",
    "20200908-subject-05",
    "20200918-subject-06",
    "20200928-subject-07",
    "20201002-subject-08",
    "20201015-subject-09",
    "20201022-subject-10",
)
DEXYCB_SERIALS: tuple[str, ...] = (
    "836212060125",
    "839512060362",
    "840412060917",
    "841412060263",
    "932122060857",
    "932122060861",
    "932122061900",
    "932122062010",
)
DEXYCB_SEQUENCES_PER_OBJECT = 5  # 5 sequences per grasped object, objects in order
DEXYCB_S0_HELD_OUT_REMAINDER = 4  # s0: sequence i with i % 5 == 4 goes to val/test
DEXYCB_S3_VAL_OBJECT_IDX = (3, 19)  # s3: object index i // 5
DEXYCB_S3_TEST_OBJECT_IDX = (7, 11, 15)

ALL_SUBJECTS = tuple(range(len(DEXYCB_SUBJECTS)))
ALL_SERIALS = tuple(range(len(DEXYCB_SERIALS)))


def _every_sequence(sequence_idx: int) -> bool:
    return True


def _s0_train(sequence_idx: int) -> bool:
    return sequence_idx % DEXYCB_SEQUENCES_PER_OBJECT != DEXYCB_S0_HELD_OUT_REMAINDER


def _s0_held_out(sequence_idx: int) -> bool:
    return sequence_idx % DEXYCB_SEQUENCES_PER_OBJECT == DEXYCB_S0_HELD_OUT_REMAINDER


def _s3_object_idx(sequence_idx: int) -> int:
    return sequence_idx // DEXYCB_SEQUENCES_PER_OBJECT


def _s3_train(sequence_idx: int) -> bool:
    return _s3_object_idx(sequence_idx) not in DEXYCB_S3_VAL_OBJECT_IDX + DEXYCB_S3_TEST_OBJECT_IDX


def _s3_val(sequence_idx: int) -> bool:
    return _s3_object_idx(sequence_idx) in DEXYCB_S3_VAL_OBJECT_IDX


def _s3_test(sequence_idx: int) -> bool:
    return _s3_object_idx(sequence_idx) in DEXYCB_S3_TEST_OBJECT_IDX


@dataclass(frozen=True, slots=True)
class SplitSpec:
    """One DexYCB split: subject indices, serial indices and a rule on the sequence index."""

    subject_idx: tuple[int, ...]
    serial_idx: tuple[int, ...]
    sequence_rule: Callable[[int], bool]
    rule_text: str  # the rule in words, for docs and error messages

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(DEXYCB_SUBJECTS[i] for i in self.subject_idx)

    @property
    def serials(self) -> tuple[str, ...]:
        return tuple(DEXYCB_SERIALS[i] for i in self.serial_idx)


DEXYCB_SPLITS: dict[str, SplitSpec] = {
    "all": SplitSpec(ALL_SUBJECTS, ALL_SERIALS, _every_sequence, "every sequence"),
    # s0: seen subjects, cameras and objects
    "s0_train": SplitSpec(ALL_SUBJECTS, ALL_SERIALS, _s0_train, "i % 5 != 4"),
    "s0_val": SplitSpec((0, 1), ALL_SERIALS, _s0_held_out, "i % 5 == 4"),
    "s0_test": SplitSpec((2, 3, 4, 5, 6, 7, 8, 9), ALL_SERIALS, _s0_held_out, "i % 5 == 4"),
    # s1: unseen subjects
    "s1_train": SplitSpec((0, 1, 2, 3, 4, 5, 9), ALL_SERIALS, _every_sequence, "every sequence"),
    "s1_val": SplitSpec((6,), ALL_SERIALS, _every_sequence, "every sequence"),
    "s1_test": SplitSpec((7, 8), ALL_SERIALS, _every_sequence, "every sequence"),
    # s2: unseen cameras
    "s2_train": SplitSpec(ALL_SUBJECTS, (0, 1, 2, 3, 4, 5), _every_sequence, "every sequence"),
    "s2_val": SplitSpec(ALL_SUBJECTS, (6,), _every_sequence, "every sequence"),
    "s2_test": SplitSpec(ALL_SUBJECTS, (7,), _every_sequence, "every sequence"),
    # s3: unseen grasped objects (object index = i // 5)
    "s3_train": SplitSpec(ALL_SUBJECTS, ALL_SERIALS, _s3_train, "i // 5 not in (3, 7, 11, 15, 19)"),
    "s3_val": SplitSpec(ALL_SUBJECTS, ALL_SERIALS, _s3_val, "i // 5 in (3, 19)"),
    "s3_test": SplitSpec(ALL_SUBJECTS, ALL_SERIALS, _s3_test, "i // 5 in (7, 11, 15)"),
}

# HO3D_v2: the split is the top-level folder (and its list file).
HO3D_SPLITS: dict[str, tuple[str, ...]] = {
    "all": ("train", "evaluation"),
    "train": ("train",),
    "evaluation": ("evaluation",),
}


def dexycb_split(name: str) -> SplitSpec:
    """The DexYCB split called `name` ("all" or "s{0..3}_{train,val,test}").

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in DEXYCB_SPLITS:
        raise ValueError(f"unknown DexYCB split {name!r}; valid splits: {', '.join(DEXYCB_SPLITS)}")
    return DEXYCB_SPLITS[name]


def ho3d_split(name: str) -> tuple[str, ...]:
    """The HO3D_v2 folders of split `name` ("all", "train" or "evaluation").

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in HO3D_SPLITS:
        raise ValueError(f"unknown HO3D split {name!r}; valid splits: {', '.join(HO3D_SPLITS)}")
    return HO3D_SPLITS[name]
