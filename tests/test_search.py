"""Automatic rho search on synthetic objectives with a known minimum."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import t as student_t

from skiptune.runs.search import full_grid, search_rho, t_interval
from skiptune.skip import parse_rule
from skiptune.store import Store

STEP = 0.05


class UShape:
    """f(rho, n, s) = A (rho - rho_opt)^2 + sigma / sqrt(n) * (0.8 z(n, s) + 0.6 z(rho, n, s)).

    The noise has unit variance (0.8^2 + 0.6^2 = 1), std shrinking like 1/sqrt(n), and a part shared
    by all rho on the same seed set (common random numbers). Every call is recorded.
    """

    def __init__(self, rho_opt: float, sigma: float = 0.0, curvature: float = 40.0):
        self.rho_opt, self.sigma, self.curvature = rho_opt, sigma, curvature
        self.calls: list[tuple[float, int, int]] = []

    def clean(self, rho: float) -> float:
        return self.curvature * (rho - self.rho_opt) ** 2

    def __call__(self, rho: float, n: int, seed_set: int) -> float:
        self.calls.append((rho, n, seed_set))
        common = np.random.default_rng([n, seed_set]).standard_normal()
        own = np.random.default_rng([n, seed_set, round(rho * 1e6)]).standard_normal()
        return self.clean(rho) + self.sigma / math.sqrt(n) * (0.8 * common + 0.6 * own)


def nearest_lattice(rho: float, lo: float = 0.5, hi: float = 1.5, step: float = STEP) -> float:
    k = min(max(round((rho - lo) / step), 0), round((hi - lo) / step))
    return round(lo + k * step, 10)


def test_noiseless_interior_optimum_and_exact_budget():
    f = UShape(0.73)
    n_max, n_min = 800, 100
    res = search_rho(f, n_max=n_max, n_min=n_min)
    assert res.rho == nearest_lattice(0.73) == 0.75 and res.rule == "layer:0.75:1" and not res.at_edge
    # Derivation: the coarse rung takes the 11 points 0.5, 0.6, ..., 1.5 at n_min. The exact parabola
    # through the best (0.7) and its neighbours has its vertex at 0.73, which snaps to 0.75; the
    # refinement takes 0.65..0.85 (5 points, spacing 0.05) at 2 n_min; the final rung 0.7, 0.75, 0.8
    # at n_max, where 0.75 is a local minimum (no walk); the estimate adds seed sets 1 and 2 at n_max.
    assert res.budget == 11 * n_min + 5 * 2 * n_min + 3 * n_max + 2 * n_max
    assert res.budget_by_stage() == {"coarse": 11 * n_min, "refine-1": 10 * n_min, "final": 3 * n_max,
                                     "estimate": 2 * n_max}
    # budget accounting: every distinct call counted once, nothing called twice
    assert len(f.calls) == len(set(f.calls)) == len(res.trace)
    assert res.budget == res.computed == sum(n for _, n, _ in f.calls)
    assert res.value == res.estimate.mean == f.clean(0.75)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(0, 20), offset=st.floats(-0.02, 0.02))
def test_noiseless_finds_the_nearest_lattice_point(k, offset):
    rho_opt = 0.5 + STEP * k + offset
    res = search_rho(UShape(rho_opt), n_max=64)
    assert res.rho == nearest_lattice(rho_opt)
    assert res.at_edge == (res.rho in (0.5, 1.5))


@pytest.mark.parametrize("rho_opt", [0.61, 0.86, 1.14, 1.39])
def test_small_noise_finds_the_optimum_below_and_above_one(rho_opt):
    # noise std at n_max = 0.01, next to a cost of 40 * (0.04^2 - 0.01^2) = 0.06 for the wrong neighbour
    n_max = 800
    f = UShape(rho_opt, sigma=0.01 * math.sqrt(n_max))
    res = search_rho(f, n_max=n_max)
    assert res.rho == nearest_lattice(rho_opt)
    assert res.budget == sum(n for _, n, _ in f.calls) and len(f.calls) == len(set(f.calls))


@pytest.mark.parametrize("rho_opt", [0.58, 0.97, 1.27, 1.44])
def test_noise_as_large_as_one_grid_step_stays_within_one_step(rho_opt):
    # noise std at n_max equals the cost of one lattice step away from the optimum (A step^2 = 0.1)
    n_max = 400
    res = search_rho(UShape(rho_opt, sigma=0.1 * math.sqrt(n_max)), n_max=n_max)
    assert abs(res.rho - rho_opt) <= STEP + 1e-9


@pytest.mark.parametrize(("rho_opt", "expected"), [(0.5, 0.5), (1.5, 1.5), (1.8, 1.5), (0.3, 0.5)])
def test_optimum_at_or_beyond_the_range_edge(rho_opt, expected):
    res = search_rho(UShape(rho_opt, sigma=0.2), n_max=400)
    assert res.rho == expected and res.at_edge
    assert "widen the range" in res.summary()


def test_deterministic():
    a = search_rho(UShape(1.12, sigma=1.0), n_max=300, baseline=1.0)
    b = search_rho(UShape(1.12, sigma=1.0), n_max=300, baseline=1.0)
    assert a == b


def test_estimate_and_baseline_intervals_from_the_trace():
    f = UShape(0.81, sigma=2.0)
    res = search_rho(f, n_max=500, seed_sets=4, confidence=0.9, baseline=1.0)
    values = {(e.rho, e.n_samples, e.seed_set): e.value for e in res.trace}
    best = [values[(res.rho, 500, s)] for s in range(4)]
    base = [values[(1.0, 500, s)] for s in range(4)]
    assert res.estimate.values == tuple(best) and res.value == best[0]
    half = student_t.ppf(0.95, 3) * np.std(best, ddof=1) / 2  # t_{0.95, 3} s / sqrt(4)
    assert res.estimate.mean == pytest.approx(np.mean(best))
    assert (res.estimate.ci_low, res.estimate.ci_high) == pytest.approx((np.mean(best) - half, np.mean(best) + half))
    diff = np.subtract(best, base)
    assert res.difference.mean == pytest.approx(diff.mean())
    assert res.difference.half_width == pytest.approx(student_t.ppf(0.95, 3) * np.std(diff, ddof=1) / 2)
    assert res.baseline.values == tuple(base)
    # the budget includes the baseline evaluations not already made
    assert res.budget == sum(n for _, n, _ in f.calls) == sum(e.n_samples for e in res.trace)
    fresh = search_rho(UShape(0.81, sigma=2.0), n_max=500, seed_sets=2, fresh_ci=True)
    assert [e.seed_set for e in fresh.trace if e.stage == "estimate"] == [1, 2]


def test_t_interval():
    est = t_interval([1.0, 2.0, 4.0], 0.95)
    s = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert est.mean == pytest.approx(7 / 3) and est.std == pytest.approx(s)
    assert est.half_width == pytest.approx(student_t.ppf(0.975, 2) * s / math.sqrt(3))
    one = t_interval([3.0])
    assert one.mean == 3.0 and math.isnan(one.ci_low) and "no interval" in str(one)


def test_templates_finer_step_and_full_grid():
    res = search_rho(UShape(0.834), n_max=64, step=0.01)
    assert res.rho == 0.83
    ramp = search_rho(UShape(0.72), n_max=64, template="ramp:down:{rho}")
    assert ramp.rule == str(parse_rule("ramp:down:0.7")) and ramp.rho == 0.7
    top = search_rho(UShape(1.2), n_max=64, template="layer:0.6:{rho}")
    assert top.rule == "layer:0.6:1.2"
    f = UShape(1.07)
    grid = full_grid(f, n_samples=100)
    assert grid.rho == 1.05 and grid.budget == 21 * 100 == sum(n for _, n, _ in f.calls) and len(grid.rhos) == 21


def test_values_read_from_a_store_count_as_cached(tmp_path):
    """An objective that answers ``(value, cached)`` (as the CLI's stored objective does) is charged only for
    what it computed; a repeated search through the same store computes nothing and decides the same."""
    base = {"model": "synthetic", "sampler": "heun", "nfe": 9}

    def stored(f, store, setting):
        def objective(rho, n, seed_set):
            cfg = {**setting, "rho": rho, "n_samples": n, "seed_set": seed_set}
            fresh = []
            rec = store.run_once(cfg, lambda _cfg: fresh.append(1) or {"fid": f(rho, n, seed_set)})
            return rec.metrics["fid"].value, not fresh
        return objective

    with Store(tmp_path / "search.sqlite") as store:
        f = UShape(1.16, sigma=0.5)
        first = search_rho(stored(f, store, base), n_max=200)
        assert first.computed == first.budget > 0 and not any(e.cached for e in first.trace)
        assert len(store.runs(base, status="complete")) == len(first.trace) == len(f.calls)
        again = UShape(1.16, sigma=0.5)
        second = search_rho(stored(again, store, base), n_max=200)
        assert again.calls == [] and second.computed == 0 and second.budget == first.budget
        assert second.rho == first.rho and second.estimate == first.estimate
        assert all(e.cached for e in second.trace)
        other = search_rho(stored(UShape(1.16, sigma=0.5), store, {**base, "nfe": 19}), n_max=200)
        assert other.computed == other.budget  # a different setting shares nothing


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lo": 1.5, "hi": 0.5}, "0 < lo < hi"),
    ({"lo": 0.0}, "0 < lo < hi"),
    ({"lo": -0.5}, "0 < lo < hi"),
    ({"hi": math.inf}, "finite"),
    ({"hi": 1.52}, "whole number of steps"),
    ({"step": 0.0}, "step must be > 0"),
    ({"coarse_step": 0.07}, "coarse_step"),
    ({"coarse_step": 2.0}, "coarse_step"),
    ({"template": "layer:0.7"}, "exactly once"),
    ({"template": "ramp:sideways:{rho}"}, "invalid rule"),
    ({"n_min": 500}, "n_min"),
    ({"seed_sets": 0}, "seed_sets"),
    ({"confidence": 1.0}, "confidence"),
    ({"growth": 1.0}, "growth"),
])
def test_invalid_settings_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        search_rho(UShape(1.0), **{"n_max": 100, **kwargs})


def test_non_finite_objective():
    with pytest.raises(ValueError, match="not finite"):
        search_rho(lambda rho, n, s: math.nan, n_max=10)
    # a diverging region (inf) is simply worse, not an error
    res = search_rho(lambda rho, n, s: math.inf if rho < 0.8 else (rho - 1.1) ** 2, n_max=16)
    assert res.rho == 1.1


def test_final_rung_walks_to_a_local_minimum_within_max_walk():
    # the optimum sits at 1.0 for small n and moves to 1.1 at n_max (like a bias that shrinks with n):
    # the rungs centre on 1.0; the final rung evaluates 0.95, 1.0, 1.05, finds its edge best, and
    # walks to 1.1, then 1.15 where 1.1 is confirmed a local minimum (2 walks)
    n_max, n_min = 400, 50

    def f(rho, n, s):
        return (rho - (1.1 if n == n_max else 1.0)) ** 2

    res = search_rho(f, n_max=n_max, n_min=n_min)
    final = [e.rho for e in res.trace if e.stage == "final"]
    assert res.rho == 1.1 and final == [0.95, 1.0, 1.05, 1.1, 1.15]
    assert res.budget == 11 * n_min + 5 * 2 * n_min + 5 * n_max + 2 * n_max
    short = search_rho(f, n_max=n_max, n_min=n_min, max_walk=1)
    assert short.rho == 1.1 and [e.rho for e in short.trace if e.stage == "final"] == [0.95, 1.0, 1.05, 1.1]
    stuck = search_rho(f, n_max=n_max, n_min=n_min, max_walk=0)
    assert stuck.rho == 1.05


def test_selecting_on_several_seed_sets_follows_their_mean_like_the_grid():
    # below n_max every set is centred at 1.0; at n_max seed set s has its minimum at c[s], so seed
    # set 0 alone prefers 0.9 while the 3-set mean (rho - c_s)^2 is smallest at mean(c) = 1.05
    n_max, n_min = 400, 50
    c = [0.9, 1.1, 1.15]

    def f(rho, n, s):
        return (rho - (c[s % 3] if n == n_max else 1.0)) ** 2

    one = search_rho(f, n_max=n_max, n_min=n_min)
    assert one.rho == full_grid(f, n_samples=n_max).rho == 0.9
    three = search_rho(f, n_max=n_max, n_min=n_min, select_sets=3)
    grid = full_grid(f, n_samples=n_max, seed_sets=3)
    assert three.rho == grid.rho == 1.05 and grid.budget == 21 * 3 * n_max and grid.seed_sets == 3
    assert grid.values[11] == pytest.approx(sum((1.05 - x) ** 2 for x in c) / 3)
    # final rung 0.95, 1.0, 1.05 then a walk to 1.1 (1.05 confirmed), each on 3 sets; the estimate reuses them
    final = [(e.rho, e.seed_set) for e in three.trace if e.stage == "final"]
    assert final == [(r, s) for r in (0.95, 1.0, 1.05, 1.1) for s in range(3)]
    assert three.budget == 11 * n_min + 5 * 2 * n_min + 4 * 3 * n_max
    assert three.value == pytest.approx(sum((1.05 - x) ** 2 for x in c) / 3) == three.estimate.mean
    fresh = search_rho(f, n_max=n_max, n_min=n_min, select_sets=3, seed_sets=2, fresh_ci=True)
    assert [e.seed_set for e in fresh.trace if e.stage == "estimate"] == [3, 4]
    with pytest.raises(ValueError, match="select_sets"):
        search_rho(f, n_max=n_max, select_sets=0)
