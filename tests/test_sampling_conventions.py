"""Each sampler's default step convention is its reference implementation's.

``SamplingSpec(sampler, nfe=n)`` builds, for the multistep solvers (UniPC, DPM-Solver++, DEIS, iPNDM, DDIM),
n solver steps ending at sigma_min with no final denoising (NFE = n), as the official UniPC and DPM-Solver
code (``denoise_to_zero=False``) and zju-pi/diff-sampler do; for EDM's samplers N steps ending at 0
(Heun: NFE = 2N - 1). The expected values below come from transcriptions of the reference loops written
here from their published descriptions, and from the formulas of the last steps; the Gaussian-mixture
oracle is the denoiser.
"""

from __future__ import annotations

import math

import pytest
import torch

from skiptune.experiment import SamplingSpec
from skiptune.sampling import DEFAULT_END, SAMPLERS, GaussianMixture, SeedNoise, edm_sigmas, sample
from skiptune.sampling.samplers import REFERENCES
from skiptune.sampling.unipc import unipc_step

MIX = GaussianMixture([0.5, 0.3, 0.2], [[-1.5, 0.5], [1.0, 1.2], [0.8, -1.4]], [0.3, 0.5, 0.7])
X_T = SeedNoise(range(64), dtype=torch.float64).randn([2]) * 80.0

pytestmark = pytest.mark.usefixtures("one_thread")


class Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return self.inner(x, sigma, **kw)


def run_spec(spec: SamplingSpec) -> tuple[torch.Tensor, int, torch.Tensor]:
    sig = spec.sigmas()
    d = Counting(MIX)
    out = sample(spec.sampler, d, X_T, sig, **spec.options)
    return out, d.calls, sig


def test_every_sampler_names_its_reference_and_default_end():
    assert set(DEFAULT_END) == set(SAMPLERS) == set(REFERENCES)
    assert {DEFAULT_END[s] for s in ("euler", "heun", "edm_sde")} == {"zero"}
    assert {DEFAULT_END[s] for s in ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm")} == {"sigma_min"}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("nfe", [5, 9])
def test_default_grid_and_exact_nfe(name, nfe):
    spec = SamplingSpec(name, nfe=nfe)
    _, calls, sig = run_spec(spec)
    assert calls == nfe == spec.resolved_nfe
    assert float(sig[0]) == 80.0
    if DEFAULT_END[name] == "sigma_min":  # n solver steps, n + 1 positive levels, the last sigma_min
        assert len(sig) == nfe + 1 and float(sig[-1]) == 0.002 and spec.resolved_steps == nfe
        assert torch.equal(sig, edm_sigmas(nfe + 1, append_zero=False))
    else:  # EDM: N steps to 0, 2N - 1 evaluations for Heun
        assert float(sig[-1]) == 0.0 and float(sig[-2]) == 0.002
        per = 2 if name in ("heun", "edm_sde") else 1
        assert per * (len(sig) - 1) - (per - 1) == nfe


def test_end_zero_and_denoise_to_zero_switches():
    zero = SamplingSpec("unipc", nfe=9, end="zero")
    _, calls, sig = run_spec(zero)
    assert calls == 9 and len(sig) == 10 and float(sig[-1]) == 0.0  # 8 solver steps, then x = D(x, sigma_min)
    dz = SamplingSpec("unipc", nfe=9, options={"denoise_to_zero": True})
    out, calls, sig = run_spec(dz)
    assert calls == 9 and len(sig) == 9 and float(sig[-1]) == 0.002  # 8 solver steps to sigma_min, then D
    above = sample("unipc", MIX, X_T, sig)
    torch.testing.assert_close(out, MIX(above, 0.002), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="end must be one of"):
        SamplingSpec("unipc", nfe=9, end="zeroo")
    with pytest.raises(ValueError, match="discrete-time grid"):
        SamplingSpec("unipc", nfe=9, end="sigma_min", grid="discrete")
    with pytest.raises(ValueError, match="cannot use exactly 4 NFE"):
        SamplingSpec("heun", nfe=4)  # refused on construction, naming the NFEs it can hit


def official_dpmpp(x: torch.Tensor, sigmas: list[float], order: int) -> torch.Tensor:
    """The official DPM-Solver++ multistep loop (data prediction, alpha = 1, lambda = -log sigma), written
    from its description: the first steps warm up with orders 1, 2, ...; below 10 steps the order of step k
    (1-based) is at most steps + 1 - k; the third-order update weights D2 by phi_3 = phi_2/h - 1/2 with
    phi_1 = expm1(-h), phi_2 = phi_1/h + 1; the second-order update is x - phi_1 (m0 + D1_0/2)."""
    steps = len(sigmas) - 1
    lam = [-math.log(s) for s in sigmas]
    models = [MIX(x, sigmas[0])]
    for k in range(1, steps + 1):
        o = min(order, k)
        if steps < 10:
            o = min(o, steps + 1 - k)
        h = lam[k] - lam[k - 1]
        phi1 = math.expm1(-h)
        base = (sigmas[k] / sigmas[k - 1]) * x - phi1 * models[-1]
        if o == 1:
            x = base
        elif o == 2:
            r0 = (lam[k - 1] - lam[k - 2]) / h
            x = base - 0.5 * phi1 * (models[-1] - models[-2]) / r0
        else:
            r0, r1 = (lam[k - 1] - lam[k - 2]) / h, (lam[k - 2] - lam[k - 3]) / h
            d1_0, d1_1 = (models[-1] - models[-2]) / r0, (models[-2] - models[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1
            phi3 = phi2 / h - 0.5
            x = base + phi2 * d1 - phi3 * d2
        if k < steps:
            models.append(MIX(x, sigmas[k]))
    return x


@pytest.mark.parametrize("name,order", [("dpmpp_2m", 2), ("dpmpp_3m", 3)])
@pytest.mark.parametrize("nfe", [6, 10, 20])
def test_dpmpp_defaults_are_the_official_solver(name, order, nfe):
    out, calls, sig = run_spec(SamplingSpec(name, nfe=nfe))
    want = official_dpmpp(X_T, [float(s) for s in sig], order)
    assert calls == nfe
    torch.testing.assert_close(out, want, rtol=0, atol=1e-11)


def test_dpmpp_3m_is_published_form_and_order3_variant_differs_where_derived():
    """On the oracle the published 3M is the more accurate at few steps; the 2 phi_3 form differs from it."""
    exact = MIX.ode_solve(X_T, 80.0, 0.002)

    def rms(name, nfe):
        out, _, _ = run_spec(SamplingSpec(name, nfe=nfe))
        return float(((out - exact) ** 2).mean().sqrt())

    for nfe in (6, 10):
        assert rms("dpmpp_3m", nfe) < rms("dpmpp_3m_order3", nfe)


def official_unipc_orders_and_calls(sigmas: list[float], order: int) -> tuple[list[int], list[bool]]:
    """The official UniPC multistep loop's (step order, corrector used) sequence: warm-up orders 1..order-1,
    then order, each capped at steps + 1 - k (lower_order_final, any step count); no corrector at the
    last step."""
    steps = len(sigmas) - 1
    orders, correct = [], []
    for k in range(1, steps + 1):
        o = min(order, k, steps + 1 - k)
        orders.append(o)
        correct.append(k < steps)
    return orders, correct


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("nfe", [5, 9, 19])
def test_unipc_default_is_the_official_loop(variant, nfe):
    out, calls, sig = run_spec(SamplingSpec("unipc", nfe=nfe, options={"variant": variant}))
    s = [float(v) for v in sig]
    orders, correct = official_unipc_orders_and_calls(s, 3)
    x, ms, lams = X_T, [MIX(X_T, s[0])], [-math.log(s[0])]
    for k, (o, c) in enumerate(zip(orders, correct, strict=True)):
        x_pred, corrector = unipc_step(x, ms, lams, s[k], s[k + 1], o, variant)
        if c:
            m = MIX(x_pred, s[k + 1])
            x = corrector(m)
            ms, lams = [*ms, m][-3:], [*lams, -math.log(s[k + 1])][-3:]
        else:
            x = x_pred
    assert calls == nfe
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)


def test_unipc_conventions_differ_on_the_oracle():
    """n solver steps to sigma_min vs n - 1 steps and x = D(x, sigma_min): not the same sampler at equal NFE."""
    exact = MIX.ode_solve(X_T, 80.0, 0.002)
    a, _, _ = run_spec(SamplingSpec("unipc", nfe=9))
    b, _, _ = run_spec(SamplingSpec("unipc", nfe=9, end="zero"))
    err_a = float(((a - exact) ** 2).mean().sqrt())
    err_b = float(((b - MIX(exact, 0.002)) ** 2).mean().sqrt())  # its target: the data point at sigma = 0
    assert abs(err_a - err_b) > 0.1 * max(err_a, err_b)


@pytest.mark.parametrize("name,weights", [
    ("ipndm", [(1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24)]),
])
def test_ipndm_last_step_to_zero_is_adams_bashforth(name, weights):
    """On a grid ending at 0 iPNDM's last step is x + (0 - sigma) eps_bar with the Adams-Bashforth mix of the
    last four eps, not x = D(x, sigma)."""
    sig = edm_sigmas(6)  # 6 steps, the last to 0
    seen = []
    out = SAMPLERS[name](MIX, X_T, sig, callback=seen.append)
    eps = [(r["x"] - r["denoised"]) / r["sigma"] for r in seen]
    last = seen[-1]
    eps_bar = sum(w * e for w, e in zip(weights[3], eps[::-1][:4], strict=True))
    torch.testing.assert_close(out, last["x"] - last["sigma"] * eps_bar, rtol=0, atol=1e-12)
    assert float((out - last["denoised"]).abs().max()) > 1e-6


def test_deis_last_step_to_zero_is_a_multistep_step():
    sig = edm_sigmas(6)
    seen = []
    out = SAMPLERS["deis"](MIX, X_T, sig, callback=seen.append)
    assert float((out - seen[-1]["denoised"]).abs().max()) > 1e-6
