"""Rules: closed-form values, the string syntax, and validation errors."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from skiptune.skip import Constant, Identity, Layer, Product, Ramp, Sites, Window, as_rule, parse_rule


def test_layer_inclusive_and_paper_spacing():
    k = 16
    r = Layer(0.55)
    vals = [r.factor(i, k, None) for i in range(k)]
    assert vals[0] == 0.55 and vals[-1] == 1.0
    assert all(math.isclose(b - a, 0.45 / 15) for a, b in zip(vals, vals[1:], strict=False))
    p = Layer(0.55, 1.0, "paper")
    assert [p.factor(i, k, None) for i in range(k)] == pytest.approx([0.55 + 0.45 / 16 * i for i in range(k)])
    assert Layer(1.5, 1.0).factor(0, k, None) == 1.5  # rho > 1 allowed


def test_ramp_endpoints_and_log_space():
    up = Ramp("up", 0.6, 0.002, 80.0)
    down = Ramp("down", 0.6, 0.002, 80.0)
    assert up.factor(0, 1, 0.002) == pytest.approx(0.6) and up.factor(0, 1, 80.0) == pytest.approx(1.0)
    assert down.factor(0, 1, 0.002) == pytest.approx(1.0) and down.factor(0, 1, 80.0) == pytest.approx(0.6)
    assert down.factor(0, 1, 1000.0) == pytest.approx(0.6) and down.factor(0, 1, 1e-5) == pytest.approx(1.0)
    mid = (0.002 + 80.0) / 2
    assert down.factor(0, 1, mid) == pytest.approx(0.8)
    lg = Ramp("down", 0.6, 0.002, 80.0, "log")
    assert lg.factor(0, 1, math.sqrt(0.002 * 80.0)) == pytest.approx(0.8)
    # per-sample tensors agree with the scalar path
    s = torch.tensor([0.002, 0.5, mid, 80.0], dtype=torch.float64)
    assert down.factor(0, 1, s).tolist() == pytest.approx([down.factor(0, 1, float(v)) for v in s])
    assert lg.factor(0, 1, s).tolist() == pytest.approx([lg.factor(0, 1, float(v)) for v in s])


def test_window_and_product():
    w = Window(0.5, 5.0, Constant(0.7))
    assert w.factor(0, 3, 0.4) == 1.0 and w.factor(0, 3, 0.5) == 0.7 and w.factor(0, 3, 5.0) == 0.7
    assert w.factor(0, 3, 5.1) == 1.0
    s = torch.tensor([0.4, 1.0, 6.0], dtype=torch.float64)
    assert w.factor(0, 3, s).tolist() == [1.0, 0.7, 1.0]
    p = Layer(0.5) * Ramp("down", 0.5, 1.0, 3.0)
    assert isinstance(p, Product) and p.sigma_dependent
    assert p.factor(0, 2, 3.0) == pytest.approx(0.25) and p.factor(1, 2, 1.0) == pytest.approx(1.0)


def test_sigma_dependent_rule_without_sigma_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no sigma was published"):
        Ramp("down", 0.5).factor(0, 4, None)


@pytest.mark.parametrize("text", ["none", "const:0.8", "layer:0.7:1", "layer:0.55:1:paper", "sites:0.6,0.7,1.2",
                                  "ramp:down:0.78", "ramp:up:0.5:0.01:10", "ramp:down:0.5:log",
                                  "ramp:up:0.5:0.01:10:log", "window:0.5:5:layer:0.7:1",
                                  "layer:0.7:1*ramp:down:0.9", "window:0.1:2:ramp:up:0.5*const:1.1"])
def test_string_round_trip(text):
    rule = parse_rule(text)
    assert str(rule) == text
    assert parse_rule(str(rule)) == rule


def test_short_forms():
    assert parse_rule("layer:0.7") == Layer(0.7, 1.0)
    assert as_rule(None) == Identity() and as_rule("none") == Identity()
    assert parse_rule(" layer:0.7 * const:2 ") == Product((Layer(0.7), Constant(2.0)))


@given(bottom=st.floats(0.01, 10), top=st.floats(0.01, 10))
def test_layer_round_trip_property(bottom, top):
    rule = Layer(bottom, top)
    back = parse_rule(str(rule))
    for i in range(5):
        assert back.factor(i, 5, None) == pytest.approx(rule.factor(i, 5, None), rel=1e-5)


@given(value=st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf"))))
def test_non_positive_or_non_finite_rho_rejected(value):
    for make in (lambda: Layer(value), lambda: Layer(0.5, value), lambda: Constant(value),
                 lambda: Sites((0.5, value)), lambda: Ramp("up", value)):
        with pytest.raises(ValueError, match="finite and > 0"):
            make()


@pytest.mark.parametrize("text,message", [
    ("layer:0", "finite and > 0"), ("layer:-0.5", "finite and > 0"), ("const:nan", "finite and > 0"),
    ("layer:abc", "not a number"), ("window:5:0.5:layer:0.7", "above its upper bound"),
    ("flat:0.7", "unknown rule name"), ("", "empty rule"), ("ramp:sideways:0.5", "'up' or 'down'"),
    ("ramp:up:0.5:10:1", "sigma_min < sigma_max"), ("layer:0.7:1:weird", "spacing"),
    ("sites:", "wrong number of values"),
])
def test_invalid_rules_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_rule(text)


def test_sites_count_checked():
    with pytest.raises(ValueError, match="2 values but the network has 3"):
        Sites((0.5, 0.6)).check(3)
    Sites((0.5, 0.6, 0.7)).check(3)
    with pytest.raises(ValueError, match="2 values"):
        Window(0, 1, Sites((0.5, 0.6))).check(3)


def test_rules_are_immutable():
    r = Layer(0.7)
    with pytest.raises(AttributeError):
        r.bottom = 0.5


# -- ramps over the step index and over VP time (seed 003, Table 10) -----------------------------------------------

def test_step_ramp_is_linear_in_the_grid_index():
    """On the grid s_0 > ... > s_{M-1}, pos(s_j) = (M-1-j)/(M-1); between grid points linear in log sigma."""
    from skiptune.skip.rules import StepRamp

    grid = (80.0, 17.5, 2.5, 0.17, 0.002, 0.0)  # the sampler's final 0 is dropped: M = 5
    up, down = StepRamp("up", 0.6, grid), StepRamp("down", 0.6, grid)
    assert up.grid == grid[:-1]
    for j, s in enumerate(grid[:-1]):
        pos = (4 - j) / 4
        assert up.factor(0, 3, s) == pytest.approx(0.6 + 0.4 * pos)
        assert down.factor(2, 3, s) == pytest.approx(1.0 - 0.4 * pos)
    # halfway between 17.5 and 2.5 in log sigma: pos = (2 + 0.5) / 4
    assert up.factor(0, 1, math.sqrt(17.5 * 2.5)) == pytest.approx(0.6 + 0.4 * 2.5 / 4)
    assert up.factor(0, 1, 1000.0) == pytest.approx(1.0) and up.factor(0, 1, 1e-6) == pytest.approx(0.6)
    s = torch.tensor([80.0, 30.0, 2.5, 0.01, 0.002, 1e-6, 500.0], dtype=torch.float64)
    assert up.factor(0, 1, s).tolist() == pytest.approx([up.factor(0, 1, float(v)) for v in s])
    assert str(up) == "ramp:up:0.6:step:80,17.5,2.5,0.17,0.002"
    assert parse_rule(str(up)) == up and parse_rule(str(down)) == down
    assert StepRamp("down", 1.0, grid).is_identity
    with pytest.raises(ValueError, match="strictly decreasing"):
        StepRamp("up", 0.6, (1.0, 2.0))
    with pytest.raises(ValueError, match="at least 2"):
        StepRamp("up", 0.6, (1.0, 0.0))
    with pytest.raises(ValueError, match="not a number"):
        parse_rule("ramp:up:0.6:step:1,x")


def test_vp_time_ramp_is_linear_in_the_vp_sde_time():
    """pos = (t(sigma) - t(lo)) / (t(hi) - t(lo)) with t the inverse of sigma(t) = sqrt(exp(19.9 t^2/2 + 0.1 t) - 1)."""
    from skiptune.skip.rules import VPTimeRamp

    def sigma_of(t):
        return math.sqrt(math.expm1(19.9 * t * t / 2 + 0.1 * t))

    lo, hi = sigma_of(0.05), sigma_of(0.85)  # VP times 0.05 and 0.85: t = 0.45 is the middle
    r = VPTimeRamp("down", 0.5, lo, hi)
    assert r.factor(0, 1, lo) == pytest.approx(1.0) and r.factor(0, 1, hi) == pytest.approx(0.5)
    assert r.factor(0, 1, sigma_of(0.45)) == pytest.approx(0.75)
    assert r.factor(0, 1, sigma_of(0.25)) == pytest.approx(1.0 - 0.5 * 0.25)
    s = torch.tensor([lo, sigma_of(0.3), sigma_of(0.45), hi, 2 * hi], dtype=torch.float64)
    assert r.factor(0, 1, s).tolist() == pytest.approx([r.factor(0, 1, float(v)) for v in s])
    unset = parse_rule("ramp:up:0.7:vp")
    assert isinstance(unset, VPTimeRamp)
    assert unset.with_sigma_range(0.002, 80.0) == parse_rule("ramp:up:0.7:0.002:80:vp")
    assert str(unset) == "ramp:up:0.7:vp" and str(r.with_sigma_range(1, 2)) == str(r)


def test_time_ramps_leave_the_existing_rule_strings_alone():
    """The new kinds are read only from their own syntax: every existing string parses to the same rule."""
    for text in ("ramp:up:0.7", "ramp:down:0.78:0.002:80", "ramp:up:0.7:log", "ramp:down:0.5:0.1:10:log",
                 "layer:0.7*ramp:down:0.9", "window:0.5:5:ramp:up:0.8"):
        rule = parse_rule(text)
        assert "Ramp" in repr(rule) and "StepRamp" not in repr(rule) and "VPTimeRamp" not in repr(rule)
        assert str(parse_rule(str(rule))) == str(rule)
    with pytest.raises(ValueError, match="'sigma' or 'log'"):
        parse_rule("ramp:up:0.7:time")
