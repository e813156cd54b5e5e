"""Sweeps: rule grids, seed sets, store-backed resumption, summaries."""

import pytest
import torch

from conftest import randomize
from skiptune import load_model
from skiptune.experiment import Scorer
from skiptune.metrics import FeatureExtractor, extract_features
from skiptune.runs.sweep import SweepSpec, best_rows, expand_rules, run_sweep, seed_sets
from skiptune.store import Store


def test_expand_rules():
    assert expand_rules("layer:0.5:0.7:0.1") == ["layer:0.5:1", "layer:0.6:1", "layer:0.7:1"]
    assert expand_rules("none; const:0.9:1.1:0.1") == ["none", "const:0.9", "const:1", "const:1.1"]
    assert expand_rules("ramp:down:{0.6..1:0.2}") == ["ramp:down:0.6", "ramp:down:0.8", "ramp:down:1"]
    assert expand_rules("layer:0.55:1:paper;layer:0.55:1:paper") == ["layer:0.55:1:paper"]
    for bad, msg in [("layer:0.5:0.7:0.15", "whole number"), ("layer:0.7:0.5:0.1", "lo <= hi"),
                     ("", "no rules"), ("layer:-1", "finite and > 0")]:
        with pytest.raises(ValueError, match=msg):
            expand_rules(bad)


def test_seed_sets_are_disjoint_shifts():
    assert seed_sets("0-99", 3) == ["0-99", "100-199", "200-299"]
    assert seed_sets("5,7", 2) == ["5,7", "8,10"]


def _extractor():
    def fn(x, wanted):
        return {"f": torch.nn.functional.avg_pool2d(x.float() / 255, 4).flatten(1)}
    return FeatureExtractor("test-pool", fn, {"f": 48}, weights_sha256="none")


def test_sweep_resumes_from_the_store(tmp_path, monkeypatch):
    net = randomize(load_model("ddpmpp-tiny"), seed=4)
    ext = _extractor()
    g = torch.Generator().manual_seed(0)
    ref = extract_features((torch.rand(200, 3, 16, 16, generator=g) * 255).to(torch.uint8), ext, keep=False)
    spec = SweepSpec(rules=["none", "layer:0.5:1"], samplers=["euler"], nfes=[2], seed_sets=seed_sets("0-59", 2),
                     batch=30)
    with Store(tmp_path / "r.sqlite") as store:
        rows = run_sweep(net, spec, store=store, scorer=Scorer(ext, ref), progress=False)
        assert store.counts()["complete"] == 4
    assert len(rows) == 2 and all(len(r.estimate.values) == 2 for r in rows)
    # a restart computes nothing and returns the same numbers
    import skiptune.experiment.scoring as scoring
    monkeypatch.setattr(scoring, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    with Store(tmp_path / "r.sqlite") as store:
        again = run_sweep(net, spec, store=store, scorer=Scorer(ext, ref), progress=False)
    assert [r.estimate.values for r in again] == [r.estimate.values for r in rows]
    best, base = best_rows(rows)[("euler", 2)]
    assert base.rule == "none" and best.estimate.mean == min(r.estimate.mean for r in rows)


def test_reference_id_names_extracted_statistics_by_provenance_not_last_bits():
    import numpy as np

    from skiptune.experiment import reference_id
    from skiptune.metrics import FeatureSet, FeatureStats

    x = np.random.default_rng(0).normal(size=(50, 4))
    meta = {"source_fingerprint": "abc", "extractor": "net", "weights_sha256": "w" * 64, "n": 50}
    a = FeatureSet({"f": FeatureStats.from_features(x)}, meta=meta)
    b = FeatureSet({"f": FeatureStats.from_features(x * (1 + 1e-7))}, meta=meta)  # e.g. another thread count
    assert reference_id(a, "f") == reference_id(b, "f")
    assert reference_id(a, "f") != reference_id(FeatureSet(a.stats, meta={**meta, "source_fingerprint": "abd"}), "f")
    # without provenance (an EDM reference file): the statistics themselves
    bare_a, bare_b = FeatureSet(a.stats), FeatureSet(b.stats)
    assert reference_id(bare_a, "f") != reference_id(bare_b, "f")
    assert reference_id(bare_a, "f") == reference_id(FeatureSet({"f": FeatureStats.from_features(x)}), "f")


def test_stored_results_of_a_revised_sampler_are_recomputed(tmp_path, monkeypatch):
    import skiptune.sampling.samplers as samplers

    net = randomize(load_model("ddpmpp-tiny"), seed=4)
    ext = _extractor()
    ref = extract_features((torch.rand(100, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255)
                           .to(torch.uint8), ext, keep=False)
    spec = SweepSpec(rules=["none"], samplers=["euler", "unipc"], nfes=[3], seed_sets=["0-19"], batch=20)
    monkeypatch.setattr(samplers, "REVISIONS", {})  # as stored before any revision
    with Store(tmp_path / "r.sqlite") as store:
        run_sweep(net, spec, store=store, scorer=Scorer(ext, ref), progress=False)
    monkeypatch.setattr(samplers, "REVISIONS", {"unipc": 1})
    with Store(tmp_path / "r.sqlite") as store:
        run_sweep(net, spec, store=store, scorer=Scorer(ext, ref), progress=False)
        # euler's set is reused; unipc's is computed again under its revision
        assert store.counts()["complete"] == 3
        assert [r.config.get("sampler_rev") for r in store.runs({"sampler": "unipc"})] in ([None, 1], [1, None])
