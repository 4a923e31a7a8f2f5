"""Tests for few-shot heads (prototype interpolation and zero-shot-initialised linear probe).

Synthetic task (see :func:`degraded_task`): images cluster around random class
directions; the zero-shot weights are those directions corrupted by heavy noise,
standing in for poorly worded labels. Shots and the held-out split are drawn
from the same image distribution.
"""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.classify.fewshot import (
    DEFAULT_ALPHA,
    _prototype_loo_nll,
    evaluate,
    fit_few_shot,
    prototype_weights,
)
from retrieval.classify.metrics import evaluate_scores
from retrieval.classify.scoring import zero_shot_probs
from retrieval.scoring import l2_normalize as normalize_rows

SCALE = 100.0


def degraded_task(n_classes=10, dim=32, shots=4, n_test=30, zs_noise=2.5, image_noise=1.0, seed=0):
    """Returns ``(zs_weights, shot_x, shot_y, test_x, test_y)``.

    Class directions ``u_c`` are random unit vectors; images are
    ``normalize(u_c + image_noise * g)``; zero-shot weights are
    ``normalize(u_c + zs_noise * h)`` (``g, h ~ N(0, I/dim)``), i.e. deliberately
    degraded so that the shots carry information the text weights lack.
    """
    rng = np.random.default_rng(seed)
    concepts = normalize_rows(rng.standard_normal((n_classes, dim)))

    def images(n_per):
        y = np.repeat(np.arange(n_classes), n_per)
        x = normalize_rows(concepts[y] + image_noise * rng.standard_normal((len(y), dim)) / np.sqrt(dim))
        return x.astype(np.float32), y

    zs = normalize_rows(concepts + zs_noise * rng.standard_normal(concepts.shape) / np.sqrt(dim))
    shot_x, shot_y = images(shots)
    test_x, test_y = images(n_test)
    return zs.astype(np.float32), shot_x, shot_y, test_x, test_y


@pytest.mark.parametrize("method", ["prototype", "linear"])
def test_few_shot_not_worse_than_degraded_zero_shot(method, record_property):
    zs, sx, sy, tx, ty = degraded_task()
    zs_top1 = evaluate_scores(zero_shot_probs(tx, zs, SCALE), ty).top1
    head = fit_few_shot(zs, sx, sy, method=method, logit_scale=SCALE)
    result = evaluate(head, tx, ty)
    gain = result["top1"] - zs_top1
    record_property(f"{method}_gain_top1", gain)
    print(f"\n{method}: zero-shot top1 {zs_top1:.3f} -> few-shot {result['top1']:.3f} "
          f"(gain {gain:+.3f}, alpha {head.alpha})")
    assert result["top1"] >= zs_top1
    assert gain > 0.05  # the degradation is strong enough that shots must help
    assert set(result) == {"n", "top1", "top5", "mean_per_class_recall", "per_class", "confusions"}


@pytest.mark.parametrize("method", ["prototype", "linear"])
def test_probabilities_are_distributions(method):
    zs, sx, sy, tx, _ = degraded_task(shots=2)
    head = fit_few_shot(zs, sx, sy, method=method)
    p = head.predict_proba(tx)
    assert p.shape == (len(tx), len(zs))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(head.predict_proba(tx, logit_scale=10.0).sum(axis=1), 1.0, atol=1e-5)


def test_alpha_zero_is_zero_shot():
    zs, sx, sy, tx, _ = degraded_task(shots=3)
    expected = zero_shot_probs(tx, zs, SCALE)
    for method in ("prototype", "linear"):
        head = fit_few_shot(zs, sx, sy, method=method, alpha=0.0, logit_scale=SCALE)
        np.testing.assert_allclose(head.predict_proba(tx), expected, atol=1e-5)


def test_prototype_alpha_one_is_nearest_prototype():
    zs, sx, sy, tx, _ = degraded_task(shots=3)
    head = fit_few_shot(zs, sx, sy, method="prototype", alpha=1.0)
    protos = normalize_rows(np.stack([sx[sy == c].mean(axis=0) for c in range(len(zs))]))
    np.testing.assert_allclose(head.weights, protos, atol=1e-6)


def test_classes_without_shots_keep_zero_shot_weights():
    zs, sx, sy, _, _ = degraded_task(shots=2)
    keep = sy < 5
    protos = prototype_weights(zs, sx[keep], sy[keep])
    np.testing.assert_allclose(protos[5:], zs[5:], atol=1e-6)
    head = fit_few_shot(zs, sx[keep], sy[keep], method="prototype", alpha=0.7)
    np.testing.assert_allclose(head.weights[5:], zs[5:], atol=1e-6)


def test_alpha_selection_vs_default():
    zs, sx, sy, _, _ = degraded_task(shots=3)
    head = fit_few_shot(zs, sx, sy, method="prototype")
    assert head.alpha_nll and head.alpha == min(head.alpha_nll, key=head.alpha_nll.get)
    assert head.alpha > 0.0  # zero-shot is degraded, so shots get weight
    single = np.r_[np.flatnonzero(sy != 0), np.flatnonzero(sy == 0)[:1]]  # class 0 has 1 shot
    for method in ("prototype", "linear"):
        head = fit_few_shot(zs, sx[single], sy[single], method=method)
        assert head.alpha == DEFAULT_ALPHA and not head.alpha_nll
    assert fit_few_shot(zs, sx, sy, alpha=0.3).alpha == 0.3


def test_prototype_loo_matches_brute_force():
    zs, sx, sy, _, _ = degraded_task(n_classes=4, dim=8, shots=3)
    closed_form = _prototype_loo_nll(zs, sx, sy, SCALE)
    for alpha in (0.0, 0.4, 1.0):
        nll = []
        for i in range(len(sy)):
            rest = np.arange(len(sy)) != i
            w = normalize_rows((1 - alpha) * zs + alpha * prototype_weights(zs, sx[rest], sy[rest]))
            p = zero_shot_probs(sx[i : i + 1], w, SCALE)[0]
            nll.append(-np.log(p[sy[i]]))
        assert closed_form[alpha] == pytest.approx(float(np.mean(nll)), rel=1e-4, abs=1e-4)


def test_linear_probe_strong_l2_stays_at_zero_shot():
    zs, sx, sy, _, _ = degraded_task(shots=2)
    head = fit_few_shot(zs, sx, sy, method="linear", alpha=1.0, l2=1e6)
    assert head.method == "linear" and head.alpha == 1.0
    np.testing.assert_allclose(head.weights, zs, atol=1e-3)
    np.testing.assert_allclose(head.bias, 0.0, atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"method": "knn"}, "unknown few-shot method"),
        ({"alpha": 1.5}, "alpha must be in"),
        ({"logit_scale": 0.0}, "logit_scale must be positive"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    zs, sx, sy, _, _ = degraded_task(shots=1)
    with pytest.raises(ValueError, match=pattern):
        fit_few_shot(zs, sx, sy, **kwargs)


def test_bad_shots():
    zs, sx, sy, _, _ = degraded_task(shots=1)
    with pytest.raises(ValueError, match="no shot vectors"):
        fit_few_shot(zs, sx[:0], sy[:0])
    with pytest.raises(ValueError, match="dimension mismatch"):
        fit_few_shot(zs, sx[:, :5], sy)
    with pytest.raises(ValueError, match="shot_labels must be in"):
        fit_few_shot(zs, sx, sy + 100)
    with pytest.raises(ValueError, match="integer class indices"):
        fit_few_shot(zs, sx, sy.astype(float))
