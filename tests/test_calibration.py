"""Temperature scaling and calibration error (emovox.calibration)."""

from __future__ import annotations

import numpy as np

from emovox.calibration import expected_calibration_error, fit_temperature, reliability


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_temperature_recovers_the_scale_of_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 1.5
    y = np.array([rng.choice(5, p=p) for p in _softmax(true_logits)])  # labels drawn from the true model
    t = fit_temperature(true_logits * 3.0, y)  # a model 3x too confident
    assert abs(t - 3.0) < 0.3
    before = expected_calibration_error(_softmax(true_logits * 3.0), y)
    after = expected_calibration_error(_softmax(true_logits * 3.0 / t), y)
    assert after < before / 3
    assert after < 0.03


def test_temperature_keeps_predictions_and_handles_nothing_to_fit() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    t = fit_temperature(logits, np.array([0, 1]))
    assert np.array_equal((logits / t).argmax(1), logits.argmax(1))
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    assert fit_temperature(np.array([[np.nan, 0.0]]), np.array([0])) == 1.0


def test_reliability_bins_count_every_clip_and_perfect_calibration_scores_zero() -> None:
    probs = np.array([[0.95, 0.05]] * 20 + [[0.55, 0.45]] * 20)
    y = np.array([0] * 19 + [1] + [0] * 11 + [1] * 9)  # 95 % and 55 % correct
    table = reliability(probs, y, bins=10)
    assert sum(row["n"] for row in table) == 40
    assert expected_calibration_error(probs, y, bins=10) < 1e-9
