"""Sigma grids against their defining formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skiptune.core.schedules import vp_sigma, vp_sigma_inv
from skiptune.sampling import (
    alphas_cumprod,
    discrete_sigmas,
    discrete_timesteps,
    edm_sigmas,
    logsnr_sigmas,
    make_sigmas,
    vp_time_quadratic_sigmas,
    vp_time_uniform_sigmas,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["edm", "logsnr", "vp_time_uniform", "vp_time_quadratic"])
def test_common_shape(kind):
    s = make_sigmas(kind, 10, 0.002, 80.0)
    assert s.dtype == torch.float64 and s.shape == (11,)
    assert float(s[0]) == 80.0 and float(s[-2]) == 0.002 and float(s[-1]) == 0.0
    assert bool((s[1:] < s[:-1]).all())
    assert torch.equal(make_sigmas(kind, 10, 0.002, 80.0, append_zero=False), s[:-1])
    assert make_sigmas(kind, 1, 0.002, 80.0).tolist() == [80.0, 0.0]


def test_edm_formula():
    n, rho, smin, smax = 18, 7.0, 0.002, 80.0
    s = edm_sigmas(n, smin, smax, rho)
    for i in (1, 7, 16):
        expect = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        assert float(s[i]) == pytest.approx(expect, rel=1e-14)


def test_logsnr_uniform():
    s = logsnr_sigmas(12, append_zero=False)
    dl = np.diff(-np.log(s.numpy()))
    assert np.allclose(dl, math.log(80 / 0.002) / 11, rtol=1e-12)


def test_vp_time_grids():
    assert float(vp_sigma(vp_sigma_inv(3.7))) == pytest.approx(3.7, rel=1e-13)
    assert float(vp_sigma(1.0)) == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1), rel=1e-14)
    t = vp_sigma_inv(vp_time_uniform_sigmas(9, append_zero=False).numpy())
    assert np.allclose(np.diff(t), np.diff(t)[0], rtol=1e-9)
    tq = np.sqrt(vp_sigma_inv(vp_time_quadratic_sigmas(9, append_zero=False).numpy()))
    assert np.allclose(np.diff(tq), np.diff(tq)[0], rtol=1e-9)


def test_discrete_timesteps():
    T = 1000
    assert discrete_timesteps(T, 10, "leading").tolist() == list(range(900, -1, -100))
    assert discrete_timesteps(T, 10, "leading", offset=1).tolist() == list(range(901, 0, -100))
    assert discrete_timesteps(T, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert discrete_timesteps(T, 4, "linspace").tolist() == [999, 666, 333, 0]
    q = discrete_timesteps(T, 5, "quadratic").tolist()
    assert q == sorted({int(v) for v in np.linspace(0, math.sqrt(800), 5) ** 2}, reverse=True)
    with pytest.raises(ValueError, match="repeated"):
        discrete_timesteps(T, 200, "quadratic")
    with pytest.raises(ValueError, match="outside"):
        discrete_timesteps(T, 10, "leading", offset=200)


def test_discrete_sigmas():
    abar = alphas_cumprod(1000)
    ts = discrete_timesteps(1000, 5, "trailing")
    s = discrete_sigmas(abar, ts)
    expect = [math.sqrt(1 / float(abar[t]) - 1) for t in ts.tolist()]
    assert np.allclose(s.tolist()[:-1], expect, rtol=1e-14, atol=0) and float(s[-1]) == 0.0


def test_bad_ranges():
    with pytest.raises(ValueError):
        edm_sigmas(0)
    with pytest.raises(ValueError):
        logsnr_sigmas(5, 1.0, 0.5)
    with pytest.raises(ValueError, match="unknown grid"):
        make_sigmas("nope", 5)
