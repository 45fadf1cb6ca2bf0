"""UniHOPE's eval.py metrics beyond MPJPE: F-score of vertices at 5 / 15 mm and the 3D PCK AUC (known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from unihope import metrics as M


def test_f_score_counts_closest_points_within_the_threshold():
    gt = np.zeros((1, 10, 3))
    gt[0, :, 0] = np.arange(10) * 0.1  # points 10 cm apart: each prediction's nearest gt is its own
    pred = gt.copy()
    pred[0, :4, 1] += 0.004  # 4 mm off: inside 5 mm
    pred[0, 4:7, 1] += 0.010  # 10 mm off: outside 5 mm, inside 15 mm
    pred[0, 7:, 1] += 0.030  # 30 mm: outside both
    # symmetric here: precision = recall = 0.4 at 5 mm, 0.7 at 15 mm, so F equals them
    assert M.f_score(pred, gt, 5.0)[0] == pytest.approx(0.4)
    assert M.f_score(pred, gt, 15.0)[0] == pytest.approx(0.7)
    assert M.f_score(gt, gt, 5.0)[0] == pytest.approx(1.0)
    assert M.f_score(gt + [0.0, 0.0, 0.05], gt, 15.0)[0] == 0.0  # nothing within: 0, not nan


def test_f_score_is_closest_point_not_index_matching_and_asymmetric_sets():
    gt = np.array([[[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.2, 0.0, 0.0], [0.3, 0.0, 0.0]]])
    shuffled = gt[:, ::-1].copy()  # same points, other order: a perfect match
    assert M.f_score(shuffled, gt, 5.0)[0] == pytest.approx(1.0)
    # every prediction on gt point 0: precision 1 (all near a gt point), recall 1/4 -> F = 2 * 0.25 / 1.25
    collapsed = np.zeros_like(gt)
    assert M.f_score(collapsed, gt, 5.0)[0] == pytest.approx(0.4)
    assert M.f_score(np.concatenate([gt, collapsed]), np.concatenate([gt, gt]), 5.0).tolist() == pytest.approx([1.0, 0.4])


def test_pck_auc_has_known_values():
    zero = np.zeros((3, 21))
    assert M.pck_auc(zero) == pytest.approx(1.0)  # every error <= every threshold
    assert M.pck_auc(np.full((3, 21), 60.0)) == 0.0  # beyond 50 mm
    # errors of exactly 25 mm: PCK 0 below 25 mm, 1 from 25 mm on; on 100 thresholds over [0, 50] the step
    # falls between two thresholds, and the trapezoid there adds half a step
    thresholds, pck = M.pck_curve(np.full((2, 21), 25.0))
    assert thresholds[0] == 0.0 and thresholds[-1] == 50.0 and len(thresholds) == 100
    first = int(np.argmax(pck > 0))
    assert thresholds[first] >= 25.0 > thresholds[first - 1]
    step = thresholds[1] - thresholds[0]
    assert M.pck_auc(np.full((2, 21), 25.0)) == pytest.approx((50.0 - thresholds[first] + step / 2) / 50.0)
    # uniform errors on [0, 50] mm give a linear PCK curve: AUC ~ 0.5
    rng = np.random.default_rng(0)
    assert M.pck_auc(rng.uniform(0, 50, (2000, 21))) == pytest.approx(0.5, abs=0.01)
    # half the joints perfect, half beyond the range: AUC 0.5 (the mean over joints)
    mixed = np.zeros((4, 2))
    mixed[:, 1] = 100.0
    assert M.pck_auc(mixed) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.pck_auc(np.zeros((0, 21)))
