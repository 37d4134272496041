"""LossMonitor on crafted curves: each diagnosis fires when it should and only then."""

from __future__ import annotations

import math

from cellcut.training.diagnostics import LossMonitor


def feed(monitor, ncuts, rec_ratio=0.2):
    said = []
    for i, n in enumerate(ncuts):
        said += monitor.update(10 * (i + 1), n, rec_ratio, 1.0)
    return said


def test_explosion_on_nan_and_on_gradient_spike_only_without_clipping():
    m = LossMonitor(5.0, 5.0, clipped=False)
    assert m.check_step(1, 0.4, 0.1, 1.0, 1e-3) is None
    d = m.check_step(2, math.nan, 0.1, 1.0, 1e-3)
    assert d.kind == "exploded" and "NaN" in d.message
    for i in range(30):
        assert m.check_step(3 + i, 0.4, 0.1 * (1 + i % 5) * 10, 1.0 + 0.1 * (i % 3), 1e-3) is None
    spike = m.check_step(40, 0.4, 0.1, 100.0, 1e-3)
    assert spike.kind == "exploded" and "gradient norm" in spike.message


def steady(monitor, steps, first=1):
    for i in range(steps):
        assert monitor.check_step(first + i, 0.4, 0.1, 1.0 + 0.1 * (i % 3), 1e-3) is None


def test_lone_gradient_spike_under_clipping_is_an_outlier_batch_repeated_ones_explode():
    m = LossMonitor(5.0, 5.0)  # clipped, the default
    steady(m, 30)
    lone = m.check_step(31, 0.4, 0.1, 100.0, 1e-3)
    assert lone.kind == "outlier_batch" and "skipped" in lone.message
    assert "learning rate is unchanged" in lone.message
    steady(m, 30, first=32)  # the window forgets it
    assert m.check_step(62, 0.4, 0.1, 100.0, 1e-3).kind == "outlier_batch"
    steady(m, 5, first=63)
    assert m.check_step(68, 0.4, 0.1, 120.0, 1e-3).kind == "outlier_batch"
    steady(m, 5, first=69)
    third = m.check_step(74, 0.4, 0.1, 90.0, 1e-3)  # 3 spikes in 13 steps: diverging
    assert third.kind == "exploded" and "3 gradient spikes" in third.message
    # the spikes never entered the median: a spike is still judged against ~1.1
    assert m.check_step(75, 0.4, 0.1, 100.0, 1e-3).kind == "outlier_batch"
    # non-finite is an explosion at once, clipping or not
    assert m.check_step(76, math.inf, 0.1, 1.0, 1e-3).kind == "exploded"


def test_converging_curve_reports_plateau_and_nothing_else():
    curve = [0.5 - 0.3 * (1 - math.exp(-i / 4)) for i in range(40)]
    kinds = [d.kind for d in feed(LossMonitor(5.0, 5.0), curve)]
    assert kinds == ["plateau"]


def test_oscillating_curve_is_unstable_and_names_the_suggested_sigma():
    curve = [0.45 + (0.1 if i % 2 else -0.1) for i in range(30)]
    said = feed(LossMonitor(12.0, 1.0), curve)
    assert [d.kind for d in said] == ["unstable"]
    assert "suggests 12" in said[0].message


def test_unstable_with_the_suggested_sigma_already_proposes_another_normalization():
    said = feed(LossMonitor(5.0, 5.0), [0.49] * 25)
    assert said and "another normalization" in said[0].message


def test_a_fine_tune_at_its_plateau_is_not_unstable_but_one_that_rises_is():
    flat = [0.2 + 0.001 * (i % 3) for i in range(30)]  # a trained model's N-cut, flat
    assert [d.kind for d in feed(LossMonitor(5.0, 5.0, fine_tuning=True), flat)] == ["plateau"]
    assert "unstable" in [d.kind for d in feed(LossMonitor(5.0, 5.0), flat)]
    rising = [0.2 + 0.004 * i for i in range(30)]
    said = feed(LossMonitor(5.0, 5.0, fine_tuning=True), rising)
    assert [d.kind for d in said] == ["unstable"] and "risen since the start" in said[0].message


def test_poor_reconstruction_when_ncut_is_fine():
    curve = [0.5 - 0.2 * (1 - math.exp(-i / 4)) for i in range(30)]
    said = feed(LossMonitor(5.0, 5.0, "mse"), curve, rec_ratio=0.9)
    assert "poor_reconstruction" in [d.kind for d in said]
    message = next(d.message for d in said if d.kind == "poor_reconstruction")
    assert "BCE with weight 0.5" in message
    said = feed(LossMonitor(5.0, 5.0, "bce"), curve, rec_ratio=0.9)
    assert "MSE with a weight near 1" in next(
        d.message for d in said if d.kind == "poor_reconstruction"
    )


def test_advice_never_proposes_the_normalization_in_use():
    for current in ("percentile", "classes", "remap"):
        said = feed(LossMonitor(5.0, 5.0, normalization=current), [0.49] * 25)
        assert said and f"normalization={current}" not in said[0].message
        said = feed(LossMonitor(12.0, 1.0, normalization=current), [0.49] * 25)
        assert f"normalization={current}" not in said[0].message


def test_collapse_to_one_class_is_caught_and_only_when_it_lasts():
    m = LossMonitor(5.0, 5.0)
    # a uniform start (each class half the mass) and single one-class patches are fine
    for step in range(1, 30):
        share = 1.0 if step % 7 == 0 else 0.5
        assert m.check_step(step, 0.5, 1.7, 1.0, 0.9, class_share=share) is None
    assert m.healthy
    found = [m.check_step(100 + i, 0.5, 1.7, 1.0, 0.9, class_share=1.0) for i in range(20)]
    assert found[:-1] == [None] * 19
    d = found[-1]
    assert d.kind == "collapsed" and "learning rate 0.9" in d.message and "rolled back" in d.message


def watch_shares(shares, start=0.28, limit=1.25):
    from cellcut.training.diagnostics import CellShareWatch

    w = CellShareWatch(start, limit, [1])
    said = [w.update(10 * (i + 1), s) for i, s in enumerate(shares)]
    return w, [d for d in said if d is not None]


def test_cell_share_watch_ignores_the_swings_of_a_fine_tune_that_refines():
    # the logged shares of a grainy-confocal fine-tune relative to its start (0.77x-1.15x)
    ratios = [0.93, 1.02, 1.0, 0.88, 0.95, 0.87, 0.97, 0.88, 1.15, 0.77, 0.96, 0.87, 1.07, 0.86]
    _, said = watch_shares([0.24 * r for r in ratios], start=0.24)
    assert said == []
    _, one_spike = watch_shares([0.28, 0.28, 0.45, 0.28, 0.28])  # one log is not a drift
    assert one_spike == []


def test_cell_share_watch_fires_on_a_lasting_growth_or_a_deep_shrink_and_names_the_way_back():
    w, said = watch_shares([0.29, 0.30, 0.385, 0.373, 0.37, 0.40])  # the tissue-background case
    assert [d.step for d in said] == [40, 50, 60]  # (0.30 + 0.385 + 0.373) / 3 = 1.26x
    assert w.near_step == 20  # the last log within 1.1x of the start
    message = said[0].message
    assert said[0].kind == "cell_share_drift"
    assert "28.0%" in message and "weights of step 20" in message
    assert "loss.intensity_centres=otsu" in message and "stop.cell_share_drift=null" in message
    _, sharpened = watch_shares([0.071, 0.065, 0.066, 0.065, 0.061, 0.063], start=0.082)
    assert sharpened == []  # light-sheet edges sharpened: 0.78x, within 1 / 1.25**2
    _, shrank = watch_shares([0.17, 0.17, 0.16], start=0.28)  # 0.595x
    assert [d.step for d in shrank] == [30]
    _, at_limit = watch_shares([0.35, 0.35, 0.35], start=0.28)  # 1.25x: not beyond it
    assert at_limit == []
