"""NFE accounting, NFE budgets, callbacks, NaN reporting, dtypes, gradients and grid validation."""

from __future__ import annotations

import pytest
import torch

from skiptune.sampling import (
    SAMPLERS,
    GaussianMixture,
    NonFiniteError,
    SeedNoise,
    edm_sigmas,
    nfe_for_sigmas,
    nfe_for_steps,
    sample_dpmpp,
    sample_euler,
    steps_for_nfe,
)

MIX = GaussianMixture([0.6, 0.4], [[-1.0, 0.5], [1.0, -0.5]], [0.4, 0.6])


pytestmark = pytest.mark.usefixtures("one_thread")


# Options that exercise each sampler's branches; NFE must not depend on them.
VARIANTS = {
    "euler": [{}],
    "heun": [{}],
    "edm_sde": [{}, {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}],
    "ddim": [{}, {"eta": 1.0}],
    "dpmpp_2m": [{}, {"lower_order_final": False}],
    "dpmpp_3m": [{}, {"lower_order_final": False}],
    "dpmpp_3m_order3": [{}, {"lower_order_final": False}],
    "unipc": [{}, {"order": 2, "variant": "bh2"}, {"use_corrector": False}, {"order": 1}],
    "deis": [{}, {"order": 4, "time": "sigma"}],
    "ipndm": [{}, {"order": 2}],
    "consistency": [{}, {"eps": 0.001}],
}


class Counting:
    """Counts calls of the wrapped denoiser."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return self.inner(x, sigma, **kw)


def expected_nfe(name: str, steps: int, final_zero: bool, denoise_to_zero: bool) -> int:
    """Derived from the algorithms: Heun-type samplers evaluate twice per step except on a step to
    sigma = 0 (EDM Alg. 1, line 7); UniPC's corrector reuses the next step's evaluation and is skipped
    at the last step, so every other sampler evaluates once per step; denoise_to_zero adds one call
    when the grid ends above 0."""
    n = 2 * steps - (1 if final_zero else 0) if name in ("heun", "edm_sde") else steps
    return n + (1 if denoise_to_zero and not final_zero else 0)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nfe_accounting(name):
    assert set(VARIANTS) == set(SAMPLERS)
    x = SeedNoise(range(3), dtype=torch.float64).randn([2]) * 80
    for opts in VARIANTS[name]:
        for steps in (1, 2, 3, 5, 12):
            for final_zero in (True, False):
                sigmas = edm_sigmas(steps if final_zero else steps + 1, append_zero=final_zero)
                for dtz in (False, True):
                    den = Counting(MIX)
                    SAMPLERS[name](den, x, sigmas, denoise_to_zero=dtz, noise=SeedNoise(range(3)), **opts)
                    want = expected_nfe(name, steps, final_zero, dtz)
                    assert den.calls == want, (name, opts, steps, final_zero, dtz)
                    assert nfe_for_steps(name, steps, final_zero=final_zero, denoise_to_zero=dtz) == want
                    assert nfe_for_sigmas(name, sigmas, denoise_to_zero=dtz) == want


@pytest.mark.parametrize("nfe", [5, 9, 19, 39])
def test_steps_for_nfe_paper_budgets(nfe):
    # One evaluation per step: steps = NFE; Heun on a grid ending at 0: 2N - 1 = NFE.
    for name in SAMPLERS:
        steps = steps_for_nfe(name, nfe)
        assert steps == ((nfe + 1) // 2 if name in ("heun", "edm_sde") else nfe)
        assert nfe_for_steps(name, steps) == nfe
    # Heun without the final zero but with denoise_to_zero: 2N + 1 = NFE.
    assert steps_for_nfe("heun", nfe, final_zero=False, denoise_to_zero=True) == (nfe - 1) // 2


def test_steps_for_nfe_impossible_budget_says_what_is_reachable():
    with pytest.raises(ValueError, match=r"'heun' cannot use exactly 10 NFE.*1, 3, 5, 7, 9"):
        steps_for_nfe("heun", 10)
    with pytest.raises(ValueError, match=r"2, 4, 6"):
        steps_for_nfe("heun", 9, final_zero=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        steps_for_nfe("nope", 9)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_once_per_step(name):
    x = SeedNoise(range(2), dtype=torch.float64).randn([2]) * 80
    sigmas = edm_sigmas(6, append_zero=False)
    seen = []
    out = SAMPLERS[name](MIX, x, sigmas, callback=seen.append, denoise_to_zero=True, noise=SeedNoise(range(2)))
    assert [d["step"] for d in seen] == list(range(len(sigmas)))  # 5 steps + the final denoising
    for d in seen:
        assert {"step", "sigma", "sigma_next", "x", "denoised", "x_next"} <= set(d)
        assert d["x"].dtype == d["denoised"].dtype == d["x_next"].dtype == torch.float64
    assert [d["sigma_next"] for d in seen] == [*sigmas[1:].tolist(), 0.0]
    assert torch.equal(seen[-1]["x_next"], out)


def nan_below(threshold: float):
    def den(x, sigma, **_):
        out = MIX(x, sigma)
        return out * torch.nan if float(sigma.reshape(-1)[0]) < threshold else out

    return den


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nan_error_names_step_and_sigma(name):
    x = SeedNoise(range(2), dtype=torch.float64).randn([2]) * 80
    sigmas = edm_sigmas(10)
    s = sigmas.tolist()
    with pytest.raises(NonFiniteError) as info:
        SAMPLERS[name](nan_below(1.0), x, sigmas, noise=SeedNoise(range(2)))
    err = info.value
    assert isinstance(err, FloatingPointError) and isinstance(err, ValueError)
    # The first call below sigma = 1: Heun's corrector and UniPC's next-step evaluation happen at
    # sigma_{i+1} inside step i; everyone else evaluates at sigma_i in step i.
    if name in ("heun", "edm_sde", "unipc"):
        step = next(i for i in range(len(s) - 1) if s[i + 1] < 1.0)
        sigma = s[step + 1]
    else:
        step = next(i for i in range(len(s)) if s[i] < 1.0)
        sigma = s[step]
    assert (err.what, err.step, err.sigma) == ("denoised", step, sigma)
    assert f"step {step}" in str(err) and f"sigma={sigma:.6g}" in str(err)


def test_nonfinite_state_is_reported():
    x = torch.full((1, 2), -1e308, dtype=torch.float64)

    def den(x, sigma, **_):
        return torch.full_like(x, 1e308)

    sigmas = torch.tensor([2.0, 1.0], dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"in x at step 0 \(sigma=1\)"):
        sample_euler(den, x, sigmas)


def test_model_dtype_cast_and_float64_state():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0))
            self.seen = set()

        def forward(self, x, sigma):
            self.seen.add(x.dtype)
            return MIX(x, sigma).to(torch.float32) * self.w

    net = Net()
    x = SeedNoise(range(2)).randn([2]) * 80  # float32 input
    out = sample_dpmpp(net, x, edm_sigmas(5))
    assert net.seen == {torch.float32} and out.dtype == torch.float64


def test_gradients_flow_and_match_closed_form():
    """Samplers keep the autograd graph. For one Gaussian, D = a(s) x + b(s) is affine, so each Euler
    step multiplies x by 1 + (s' - s)(1 - a(s))/s with a(s) = std^2/(std^2 + s^2): d x_N / d x_0 is the product."""
    std = 0.7
    gauss = GaussianMixture.gaussian([0.3, -0.2], std)
    sigmas = edm_sigmas(8, append_zero=False)
    x = (SeedNoise(range(3), dtype=torch.float64).randn([2]) * 80).requires_grad_(True)
    sample_euler(gauss, x, sigmas).sum().backward()
    s = sigmas.tolist()
    factor = 1.0
    for a, b in zip(s[:-1], s[1:], strict=True):
        factor *= 1 + (b - a) * (1 - std**2 / (std**2 + a**2)) / a
    assert torch.allclose(x.grad, torch.full_like(x, factor), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "bad,msg",
    [
        ([80.0], "at least 2"),
        ([80.0, 0.0, 1.0], "> 0"),
        ([80.0, 80.0, 1.0], "strictly"),
        ([1.0, 2.0, 0.0], "strictly"),
        ([0.5, 1.0], None),
        ([80.0, float("nan")], "finite"),
    ],
)
def test_grid_validation(bad, msg):
    grid = torch.tensor(bad, dtype=torch.float64)
    if msg is None:  # an increasing positive grid is valid (inversion)
        sample_euler(MIX, torch.zeros(1, 2), grid)
        return
    with pytest.raises(ValueError, match=msg):
        sample_euler(MIX, torch.zeros(1, 2), grid)


def test_stochastic_samplers_refuse_increasing_grids():
    up = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="stochastic"):
        SAMPLERS["edm_sde"](MIX, torch.zeros(1, 2), up)
    with pytest.raises(ValueError, match="stochastic"):
        SAMPLERS["ddim"](MIX, torch.zeros(1, 2), up, eta=0.5)


def test_lower_order_final_only_below_ten_steps_for_dpmpp():
    x = SeedNoise(range(2), dtype=torch.float64).randn([2]) * 80
    for steps, differs in ((6, True), (12, False)):
        sig = edm_sigmas(steps + 1, append_zero=False)
        a = SAMPLERS["dpmpp_3m"](MIX, x, sig, lower_order_final=True)
        b = SAMPLERS["dpmpp_3m"](MIX, x, sig, lower_order_final=False)
        assert (not torch.equal(a, b)) == differs


@pytest.mark.parametrize("name,opts", [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("unipc", {}), ("unipc", {"order": 2}),
                                       ("unipc", {"variant": "bh2"})])
def test_final_step_to_zero_is_not_a_solver_step(name, opts):
    # On a grid ending at 0 the last step is x = D(x, sigma_min): the same solver steps as on the grid
    # without the 0 (whose last step is first order under lower_order_final), then one denoising.
    x = SeedNoise(range(3), dtype=torch.float64).randn([2]) * 80
    sig = edm_sigmas(6, append_zero=False)
    to_zero = SAMPLERS[name](MIX, x, torch.cat([sig, sig.new_zeros(1)]), **opts)
    above = SAMPLERS[name](MIX, x, sig, **opts)
    torch.testing.assert_close(to_zero, MIX(above, sig[-1]), rtol=1e-12, atol=1e-12)


def test_edm_sde_without_churn_is_heun():
    x = SeedNoise(range(3), dtype=torch.float64).randn([2]) * 80
    sig = edm_sigmas(7)
    assert torch.equal(SAMPLERS["edm_sde"](MIX, x, sig, noise=SeedNoise(range(3))), SAMPLERS["heun"](MIX, x, sig))
