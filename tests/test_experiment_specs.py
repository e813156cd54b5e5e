"""Points: one description of a run, with canonical forms that make equal points equal."""

from __future__ import annotations

import pytest

from skiptune.core.errors import InputError
from skiptune.experiment import ModelRef, Point, SamplingSpec, ScoringSpec, migrate_config
from skiptune.skip import canonical_rule, parse_rule
from skiptune.store import config_key

MODEL = ModelRef("a" * 64, source="demo-digits")
SCORING = ScoringSpec("digits-classifier", "b" * 64, "c" * 64, 1497)


def _point(rule="none", *, nfe=5, steps=None, mode="concat", seeds="0-9", sampler="heun", **kw) -> Point:
    sampling = SamplingSpec(sampler, nfe=None if steps else nfe, steps=steps)
    return Point(MODEL, sampling, parse_rule(rule) if isinstance(rule, str) else rule, seeds, SCORING, mode=mode, **kw)


@pytest.mark.parametrize("spelling", ["none", "const:1", "layer:1:1", "layer:1", "ramp:down:1", "sites:1,1,1",
                                      "window:0.5:5:const:1", "const:1*ramp:up:1"])
def test_every_spelling_of_rho_1_is_the_untouched_point(spelling):
    assert parse_rule(spelling).is_identity and str(canonical_rule(spelling)) == "none"
    assert _point(spelling).key() == _point("none").key()
    assert _point(spelling, mode="residual").key() == _point("none").key()  # no rho acts: the mode is moot


@pytest.mark.parametrize("rule", ["const:0.999", "layer:0.7", "ramp:down:0.9", "window:0.5:5:const:0.7"])
def test_other_rules_keep_their_own_points(rule):
    assert not parse_rule(rule).is_identity
    assert _point(rule).key() != _point("none").key()
    assert _point(rule, mode="residual").key() != _point(rule).key()


def test_a_step_count_is_the_point_of_its_nfe():
    assert _point(steps=3).key() == _point(nfe=5).key()  # Heun on a grid ending at 0: 2 x 3 - 1 evaluations
    assert _point(steps=3, sampler="euler").key() == _point(nfe=3, sampler="euler").key()
    assert _point(steps=3).key() != _point(nfe=3, sampler="euler").key()


def test_the_key_is_the_store_key_of_the_config_and_ignores_context():
    p = _point("layer:0.7")
    assert p.key() == config_key(p.to_config())
    other = Point(ModelRef("a" * 64, source="elsewhere.safetensors", loader="skiptune"), p.sampling, p.rule, p.seeds,
                  SCORING)
    assert other.key() == p.key() and other.context() != p.context()
    assert _point("layer:0.7", batch=100).key() != p.key() and _point("layer:0.7", seeds="10-19").key() != p.key()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seeds": "0-3,2-5"}, r"repeats 2 seeds \(2-3\)"),
    ({"mode": "sideways"}, "unknown mode"),
    ({"batch": 0}, "batch must be a positive integer"),
    ({"precision": "fp8"}, "precision must be one of"),
])
def test_invalid_points_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        _point(**kwargs)
    with pytest.raises(InputError, match="full sha256"):
        ModelRef("abc")


def test_schema_1_configs_map_to_the_points_they_were():
    new = _point("const:0.7").to_config()
    v1_sweep = {**new, "kind": "sweep-point"}
    assert migrate_config(v1_sweep) == new
    v1_compare = {k: v for k, v in new.items() if k != "nfe"}
    v1_compare.update(kind="compare-training-fid", model={"sha256": MODEL.sha256, "class_name": "EDMPrecond"}, steps=3)
    assert migrate_config(v1_compare) == new
    untouched = {**_point("none").to_config(), "kind": "sweep-point", "rule": "layer:1:1", "mode": "residual"}
    assert migrate_config(untouched) == _point("none").to_config()
    foreign = {"kind": "user", "rule": "const:1"}
    assert migrate_config(foreign) is foreign
