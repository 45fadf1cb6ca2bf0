"""UniHOPE's keep rules (score, occ, and, or, all, none) on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from unihope.config import DeocclusionConfig
from unihope.deocclude.keep import KEEP_RULES, generation_max_visibility, keep_decision, keep_mask, pairs_by_rule

NAN = float("nan")
# Six samples: (visibility, original score, generated score) with the threshold 0.9 and margin 0.1.
CASES = [
    (0.5, 0.2, 0.6),  # 0: occluded, clear gain      -> score yes, occ yes
    (0.5, 0.2, 0.25),  # 1: occluded, gain < margin  -> score no,  occ yes
    (0.95, 0.2, 0.6),  # 2: barely occluded, gain    -> score yes, occ no
    (0.95, 0.6, 0.2),  # 3: barely occluded, worse   -> score no,  occ no
    (0.9, 0.3, 0.41),  # 4: at the threshold (kept: <=), gain just above the margin
    (0.4, NAN, NAN),  # 5: nothing generated: never kept
]
EXPECTED = {  # rule -> which of the six samples it keeps
    "score": [0, 2, 4],
    "occ": [0, 1, 4],
    "and": [0, 1, 2, 4],  # upstream drops only when both tests drop: keeps when either passes
    "or": [0, 4],  # upstream drops when either test drops: keeps only when both pass
    "all": [0, 1, 2, 3, 4],
    "none": [],
}


def columns():
    visibility, original, generated = (np.array(column, dtype=np.float64) for column in zip(*CASES))
    return visibility, original, generated


@pytest.mark.parametrize("rule", KEEP_RULES)
def test_each_rule_keeps_what_upstream_keeps(rule: str):
    visibility, original, generated = columns()
    kept = keep_mask(rule, visibility, original, generated, max_visibility=0.9, margin=0.1)
    assert np.flatnonzero(kept).tolist() == EXPECTED[rule]


def test_rule_set_and_counts():
    assert set(KEEP_RULES) == set(EXPECTED)
    cfg = DeocclusionConfig(max_visibility=0.9, keep_margin=0.1)
    assert pairs_by_rule(*columns(), cfg) == {rule: len(kept) for rule, kept in EXPECTED.items()}
    with pytest.raises(ValueError, match="keep rule"):
        keep_mask("best", *columns(), max_visibility=0.9, margin=0.1)
    with pytest.raises(ValueError):
        DeocclusionConfig(keep_rule="all-gen")


def test_decision_names_the_test_that_dropped_it():
    occ = DeocclusionConfig(keep_rule="occ")
    assert keep_decision(occ, 0.5, 0.6, 0.2) == (True, "kept")  # occ ignores the score
    assert keep_decision(occ, 0.95, 0.2, 0.6) == (False, "not_occluded")
    both = DeocclusionConfig(keep_rule="or", keep_margin=0.1)
    assert keep_decision(both, 0.5, 0.2, 0.25) == (False, "no_gain")
    assert keep_decision(both, 0.95, 0.2, 0.6) == (False, "not_occluded")
    assert keep_decision(DeocclusionConfig(keep_rule="score"), 0.95, 0.2, 0.6) == (True, "kept")
    assert keep_decision(DeocclusionConfig(keep_rule="none"), 0.5, 0.2, 0.6) == (False, "rule_none")
    assert keep_decision(DeocclusionConfig(keep_rule="all"), 0.99, 0.6, 0.2) == (True, "kept")


def test_generation_limit_follows_the_rule():
    # occ-like rules cannot keep a frame above max_visibility: nothing is generated for it
    assert generation_max_visibility(DeocclusionConfig(keep_rule="occ", max_visibility=0.8)) == 0.8
    assert generation_max_visibility(DeocclusionConfig(keep_rule="or", max_visibility=0.8)) == 0.8
    # score / and / all may keep any frame
    for rule in ("score", "and", "all"):
        assert generation_max_visibility(DeocclusionConfig(keep_rule=rule, max_visibility=0.8)) == 1.0
    assert generation_max_visibility(DeocclusionConfig(keep_rule="score", generate_max_visibility=0.95)) == 0.95
