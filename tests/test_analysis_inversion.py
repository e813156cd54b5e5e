"""``skiptune analyze inversion``: MMD identities, inversion of an exact Gaussian-mixture oracle, the CLI."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from analysis_tiny import common_args, run_cli, tiny_assets, unit_rows
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.inversion import (
    InversionConfig,
    _table,
    inversion_grid,
    invert_to_noise,
    noise_kernels,
    noise_mmd,
    run_inversion,
    standardise,
)
from skiptune.cli import main
from skiptune.cli.analyses import inversion as inversion_cli
from skiptune.core.errors import InputError
from skiptune.metrics.mmd import Kernel, mmd2
from skiptune.sampling import GaussianMixture, SeedNoise
from skiptune.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def _normal(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_mmd_closed_forms():
    x, y = _normal(30, 5, 0) + 0.3, _normal(40, 5, 1)
    kernels = noise_kernels(y)
    assert list(kernels) == ["rbf 0.5x median", "rbf 1x median", "rbf 2x median", "laplacian median", "polynomial 3",
                             "linear"]
    # biased MMD^2 of a sample with itself is 0 for every kernel (all three means coincide)
    for v in noise_mmd(x, x, kernels, unbiased=False).values():
        assert abs(v) < 1e-12
    # linear kernel: biased MMD^2 = ||mean x - mean y||^2; unbiased = that - tr S_x / m - tr S_y / n
    gap = float(((x.mean(0) - y.mean(0)) ** 2).sum())
    assert noise_mmd(x, y, kernels, unbiased=False)["linear"] == pytest.approx(gap, rel=1e-12)
    tr_x, tr_y = float(x.var(0).sum()) / 30, float(y.var(0).sum()) / 40  # var: unbiased (ddof 1)
    assert noise_mmd(x, y, kernels)["linear"] == pytest.approx(gap - tr_x - tr_y, rel=1e-10)


def test_median_bandwidth_of_standard_normal_draws():
    """||a - b||^2 = 2 chi^2_d for independent a, b ~ N(0, I_d): the median L2 distance is sqrt(2 median chi^2_d).
    The sample median over the 79800 pairs of 400 draws has a standard error well below 1% of it
    (the distance itself has a relative spread of about 1/sqrt(2d) = 9%)."""
    d = 64
    k = noise_kernels(_normal(400, d, 3), rbf_scales=(1.0, 2.0))
    expected = math.sqrt(2 * chi2.median(d))
    assert k["rbf 1x median"].sigma == pytest.approx(expected, rel=0.03)
    assert k["rbf 2x median"].sigma == pytest.approx(2 * k["rbf 1x median"].sigma, rel=1e-12)
    with pytest.raises(ValueError, match="> 0"):
        noise_kernels(_normal(10, 2, 0), rbf_scales=(0.0,))


def test_unbiased_mmd_has_zero_mean_between_samples_of_one_distribution():
    """E[unbiased MMD^2] = 0 when both samples come from the same law (seed 003 eq. 6 is a U-statistic):
    the mean of R independent estimates lies within 4 standard errors (s / sqrt(R)) of 0."""
    kernels = {k: v for k, v in noise_kernels(_normal(200, 4, 99)).items()}  # fixed kernels for every draw
    reps = 150
    values = {k: [] for k in kernels}
    for r in range(reps):
        for k, v in noise_mmd(_normal(20, 4, 2 * r + 1000), _normal(25, 4, 2 * r + 1001), kernels).items():
            values[k].append(v)
    for k, v in values.items():
        v = np.asarray(v)
        assert abs(v.mean()) < 4 * v.std(ddof=1) / math.sqrt(reps), k
    # while the biased estimate is positive on average (its bias is E k(x,x)/m + E k(y,y)/n - ... > 0)
    assert np.mean([mmd2(_normal(20, 4, s), _normal(25, 4, s + 500), Kernel("rbf", sigma=2.0), unbiased=False)
                    for s in range(30)]) > 0


def test_inverting_exact_oracle_samples_gives_the_noise_marginal():
    """Data y ~ sum_k w_k N(mu_k, s_k^2 I) is carried by the exact probability-flow ODE to p_{sigma_max}, so
    z = x(sigma_max) / sigma_max has mean m / sigma_max (m = sum_k w_k mu_k) and per-coordinate variance
    v = (sum_k w_k (s_k^2 + sigma_max^2) + sum_k w_k ||mu_k - m||^2 / d) / sigma_max^2; the unbiased
    linear-kernel MMD^2 against fresh N(0, I) draws then has expectation ||m||^2 / sigma_max^2 (here 1), with
    standard deviation about sqrt(4 ||m||^2 (v/M + 1/N) / sigma_max^2 + 2 d (v/M + 1/N)^2) = 0.14 (M = N = 400)."""
    d, m_count = 16, 400
    offset = 20.0  # ||m|| / sigma_max = sqrt(16) * 20 / 80 = 1
    means = torch.full((2, d), offset, dtype=torch.float64)
    means[0, :4] += 3.0
    means[1, :4] -= 3.0
    mix = GaussianMixture([0.5, 0.5], means, [0.5, 1.0])
    y = mix.sample(SeedNoise(range(m_count), dtype=torch.float64))
    sig = inversion_grid(None, 40)
    smax = float(sig[-1])
    assert (float(sig[0]), smax) == (0.002, 80.0) and len(sig) == 41
    z = invert_to_noise(mix, y, sig, sampler="heun", batch=150)
    assert z.shape == (m_count, d)
    var = (0.5 * (0.25 + smax**2) + 0.5 * (1.0 + smax**2) + 4 * 9.0 / d) / smax**2
    se_mean = math.sqrt(var / m_count / d)  # the mean over all coordinates (independent across coordinates)
    assert float(z.mean()) == pytest.approx(offset / smax, abs=4 * se_mean)
    se_var = var * math.sqrt(2 / (m_count * d))
    assert float(z.var(0).mean()) == pytest.approx(var, abs=4 * se_var)
    ref = SeedNoise(range(10_000, 10_000 + m_count), dtype=torch.float64).randn([d])
    lin = noise_mmd(z, ref, {"linear": Kernel("linear")})["linear"]
    spread = math.sqrt(4 * 1.0 * (var / m_count + 1 / m_count) + 2 * d * (var / m_count + 1 / m_count) ** 2)
    assert lin == pytest.approx(1.0, abs=4 * spread)
    # without the division by sigma_max the same statistic would be sigma_max^2 times larger
    assert noise_mmd(z * smax, ref * smax, {"linear": Kernel("linear")})["linear"] == pytest.approx(lin * smax**2)


def test_standardised_latents_keep_the_shape_and_drop_the_scale():
    """standardise(c z + b) = standardise(z) for any scalar c > 0 and b, so the standardised MMD of a set scaled
    by 0.82 (the untouched digits' latent std) equals that of the unscaled set, while the raw MMD^2 grows: for the
    linear kernel the unbiased MMD^2 of c g against fresh N(0, I) draws h is (c mean g - mean h)^2-sum minus the
    two trace terms (test_mmd_closed_forms), an independent numpy computation below."""
    g, h = _normal(60, 8, 5), _normal(60, 8, 6)
    s = standardise(0.82 * g + 0.3)
    assert torch.allclose(s, standardise(g), atol=1e-12)
    assert float(s.mean()) == pytest.approx(0.0, abs=1e-12) and float(s.std()) == pytest.approx(1.0, rel=1e-12)
    kernels = noise_kernels(standardise(h))
    assert noise_mmd(s, standardise(h), kernels) == pytest.approx(noise_mmd(standardise(g), standardise(h), kernels))
    a, b = (0.82 * g).numpy(), h.numpy()
    gap = ((a.mean(0) - b.mean(0)) ** 2).sum()
    expected = gap - a.var(0, ddof=1).sum() / 60 - b.var(0, ddof=1).sum() / 60
    assert noise_mmd(0.82 * g, h, {"linear": Kernel("linear")})["linear"] == pytest.approx(expected, rel=1e-10)
    with pytest.raises(InputError, match="all equal"):
        standardise(torch.ones(3, 2))


def test_relative_mmd_is_the_ratio_of_mean_distances():
    """relative_mmd = mean_k sqrt(max(MMD^2_k, 0)) over chunks / the same for the untouched network; relative_mmd2
    = ratio of the mean MMD^2 (Table 13 normalises the baseline to 1); a negative unbiased estimate counts as 0."""
    raw = {("none", 0): 0.04, ("none", 1): 0.09, ("tuned", 0): 0.01, ("tuned", 1): -0.002}
    std = {("none", 0): 0.0025, ("none", 1): 0.01, ("tuned", 0): 0.0036, ("tuned", 1): 0.0064}
    per = {key: {"mmd2": {"k": raw[key]}, "mmd2_standardised": {"k": std[key]}, "latent_std": 0.8,
                 "latent_mean": 0.0} for key in raw}
    rows, summary = _table(per, ["none", "tuned"], ["k"], 2)
    got = {(r["latents"], r["rule"]): r for r in rows}
    assert got[("raw", "none")]["relative_mmd"] == 1.0 and got[("raw", "none")]["mmd"] == pytest.approx(0.25)
    assert got[("raw", "tuned")]["mmd"] == pytest.approx(0.05)  # (0.1 + 0) / 2
    assert got[("raw", "tuned")]["relative_mmd"] == pytest.approx(0.05 / 0.25)
    assert got[("raw", "tuned")]["relative_mmd2"] == pytest.approx(0.004 / 0.065)
    assert got[("standardised", "tuned")]["relative_mmd"] == pytest.approx(0.07 / 0.075)
    assert got[("standardised", "tuned")]["relative_mmd2"] == pytest.approx(0.005 / 0.00625)
    assert got[("standardised", "tuned")]["diff"] == pytest.approx(0.005 - 0.00625)
    assert summary["kernels_below_1[tuned, raw]"] == "1/1" and summary["kernels_below_1[tuned, standardised]"] == "1/1"


def test_inversion_cli_end_to_end_and_resume(tmp_path, tmp_path_factory, capsys):
    tiny = tiny_assets(tmp_path_factory)
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "inversion", *common_args(tiny, db, out), "--steps", "3", "--seeds", "0-7",
            "--rules", "none;const:0.7;const:1"]
    # an interrupted run: the first chunk only
    res = run_cli(*args, "--seed-sets", "1")
    assert res.returncode == 0, res.stderr
    first = unit_rows(db, "inversion")
    assert len(first) == 2  # const:1 is the untouched network: one point with none
    # the whole analysis computes the second chunk only
    assert main([*args, "--seed-sets", "2"]) == 0
    units = unit_rows(db, "inversion")
    assert len(units) == 4 and all(units[k] == v for k, v in first.items())
    rows = list(csv.DictReader(open(out / "inversion.csv", newline="")))
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    assert len(kernels) == 6 and len(rows) == 2 * 6 * 2 and {r["rule"] for r in rows} == {"none", "const:0.7"}
    assert [r["latents"] for r in rows] == ["raw"] * 12 + ["standardised"] * 12
    for r in rows:
        if r["rule"] == "none":  # the untouched network: relative MMD exactly 1
            assert float(r["relative_mmd"]) == 1.0 and float(r["relative_mmd2"]) == 1.0 and float(r["diff"]) == 0.0
        else:
            key = (r["latents"], r["kernel"], "none")
            base = next(b for b in rows if (b["latents"], b["kernel"], b["rule"]) == key)
            assert float(r["relative_mmd2"]) == pytest.approx(float(r["mmd2"]) / float(base["mmd2"]), rel=1e-12)
            assert float(r["relative_mmd"]) == pytest.approx(float(r["mmd"]) / float(base["mmd"]), rel=1e-12)
    md = (out / "inversion.md").read_text()
    assert "training split" in md and (out / "inversion.png").stat().st_size > 1000
    assert main([*args, "--seed-sets", "2"]) == 0  # rerun: nothing recomputed
    assert unit_rows(db, "inversion") == units
    # the library with the same settings reads the same units (its unit configs are the command line's)
    ctx = AnalysisContext(model=str(tiny["model"]), data=str(tiny["data"]), db=None, progress=False)
    config = InversionConfig(rules="none;const:0.7;const:1", steps=3, seeds="0-7", seed_sets=2,
                             data_id=f"{tiny['data']}:train")
    data = ctx.dataset("train")
    with Store(db) as store:
        lib = run_inversion(ctx.net, data.images, data.labels, config, store=store)
    assert unit_rows(db, "inversion") == units
    assert lib.config == json.loads((out / "inversion.json").read_text())["config"]
    assert [(r["latents"], r["kernel"], r["rule"], r["mmd2"]) for r in lib.rows] == [
        (r["latents"], r["kernel"], r["rule"], pytest.approx(float(r["mmd2"]), rel=1e-12)) for r in rows]
    capsys.readouterr()
    assert main([*args, "--seed-sets", "7"]) == 2  # 7 x 8 images > 48
    assert "only 48 are available" in capsys.readouterr().err
    assert main([*args, "--sampler", "edm_sde"]) == 2
    assert "deterministic" in capsys.readouterr().err
    assert main([*args, "--split", "test"]) == 2
    assert "pass --split train" in capsys.readouterr().err


def test_inversion_config_refuses_bad_settings_and_has_the_cli_defaults():
    with pytest.raises(InputError, match=r"InversionConfig\.sampler: inversion needs a deterministic sampler"):
        InversionConfig(sampler="edm_sde")
    with pytest.raises(InputError, match=r"InversionConfig\.steps must be an integer >= 1, got 0"):
        InversionConfig(steps=0)
    with pytest.raises(InputError, match=r"InversionConfig\.rbf_scales: RBF bandwidth scales must be numbers > 0"):
        InversionConfig(rbf_scales=(1.0, 0.0))
    with pytest.raises(InputError, match=r"InversionConfig\.seeds: seed range '5-1' is empty"):
        InversionConfig(seeds="5-1")
    with pytest.raises(InputError, match=r"InversionConfig\.seed_sets must be an integer >= 1"):
        InversionConfig(seed_sets=0)
    with pytest.raises(InputError, match=r"InversionConfig\.grid: unknown grid 'discrete'"):
        InversionConfig(grid="discrete")
    # rules in canonical form; the untouched network is added (first) when missing, else kept in place
    assert InversionConfig().rules == ("none", "layer:0.7:1", "const:0.7")
    assert InversionConfig(rules="const:0.7").rules == ("none", "const:0.7")
    assert InversionConfig(rules=("const:0.7", "const:1")).rules == ("const:0.7", "none")
    p = argparse.ArgumentParser()
    inversion_cli.add_arguments(p)
    assert (inversion_cli.config_from_args(p.parse_args([]), AnalysisContext(), "test")
            == dataclasses.replace(InversionConfig(), data_id="digits:test"))
