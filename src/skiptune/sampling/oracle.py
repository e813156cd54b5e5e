"""An analytic isotropic Gaussian mixture: exact denoiser, exact samples, exact ODE solutions.

Data y ~ sum_k w_k N(mu_k, s_k^2 I) in d dimensions; the noisy marginal at level sigma is
p_sigma = sum_k w_k N(mu_k, (s_k^2 + sigma^2) I). Tweedie's formula gives the exact denoiser

    D(x, sigma) = E[y | x] = sum_k r_k(x, sigma) (s_k^2 x + sigma^2 mu_k) / (s_k^2 + sigma^2),

r_k the posterior responsibilities (REFERENCE.md Sec. 2). For one Gaussian the probability-flow ODE
dx/dsigma = (x - D)/sigma has the closed form x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2);
for a mixture :meth:`GaussianMixture.ode_solve` integrates it with an 8th-order adaptive Runge-Kutta
method (scipy DOP853, rtol 1e-12) in u = log sigma, in float64.

Inputs of shape [B, *dims] are flattened to [B, d]. Everything is float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from skiptune.core.errors import InputError
from skiptune.sampling.noise import SeedNoise


def _sigma_col(sigma: torch.Tensor | float, batch: int) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    if s.shape[0] not in (1, batch):
        raise InputError(f"sigma has {s.shape[0]} values for a batch of {batch}")
    return s


class GaussianMixture:
    """Isotropic Gaussian mixture with weights [K], means [K, d] and stds [K]; a denoiser itself."""

    input_dtype = torch.float64

    def __init__(
        self,
        weights: Sequence[float] | torch.Tensor,
        means: Sequence[Sequence[float]] | torch.Tensor,
        stds: Sequence[float] | torch.Tensor,
    ):
        self.weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        if self.means.ndim != 2:
            raise InputError("means must have shape [K, d]")
        k = self.means.shape[0]
        if self.weights.shape[0] != k or self.stds.shape[0] != k:
            raise InputError("weights, means and stds must agree on the number of components")
        if not bool((self.weights > 0).all()) or abs(float(self.weights.sum()) - 1) > 1e-12:
            raise InputError("weights must be positive and sum to 1")
        if not bool((self.stds > 0).all()):
            raise InputError("stds must be positive")
        self.log_weights = self.weights.log()

    @classmethod
    def gaussian(cls, mean: Sequence[float] | torch.Tensor, std: float) -> GaussianMixture:
        """A single isotropic Gaussian N(mean, std^2 I)."""
        return cls([1.0], torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1), [std])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.to(torch.float64).reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise InputError(f"x has {flat.shape[1]} values per sample, the mixture has d = {self.dim}")
        return flat

    def log_joint(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """[B, K]: log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I)."""
        flat = self._flat(x)
        var = self.stds**2 + _sigma_col(sigma, flat.shape[0]) ** 2  # [B or 1, K]
        sq = ((flat[:, None, :] - self.means[None]) ** 2).sum(-1)  # [B, K]
        return self.log_weights - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """log p_sigma(x), shape [B]."""
        return torch.logsumexp(self.log_joint(x, sigma), dim=-1)

    def responsibilities(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Posterior component probabilities r_k(x, sigma), shape [B, K]."""
        return torch.softmax(self.log_joint(x, sigma), dim=-1)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, **_: object) -> torch.Tensor:
        """The exact denoiser D(x, sigma) = E[y | y + sigma n = x], same shape as x, float64."""
        flat = self._flat(x)
        s2 = _sigma_col(sigma, flat.shape[0]) ** 2  # [B or 1, 1]
        var = self.stds**2 + s2  # [B or 1, K]
        r = self.responsibilities(x, sigma)  # [B, K]
        a = r * (self.stds**2 / var)  # weight on x
        c = r * (s2 / var)  # weight on mu_k
        out = a.sum(-1, keepdim=True) * flat + c @ self.means
        return out.reshape(x.shape)

    __call__ = denoise

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2 (sigma > 0)."""
        s = _sigma_col(sigma, x.shape[0]).reshape(-1, *([1] * (x.ndim - 1)))
        return (self.denoise(x, sigma) - x.to(torch.float64)) / s**2

    def sample(
        self, noise: SeedNoise | int, sigma: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Exact samples of p_sigma, shape [B, d].

        ``noise`` is a :class:`SeedNoise` (sample i from seed i: one uniform for the component, then d
        normals) or a sample count (then ``generator`` or torch's global generator is used).
        """
        if isinstance(noise, SeedNoise):
            u = noise.rand([1]).to(torch.float64).reshape(-1)
            z = noise.randn([self.dim]).to(torch.float64)
        else:
            u = torch.rand(int(noise), dtype=torch.float64, generator=generator)
            z = torch.randn(int(noise), self.dim, dtype=torch.float64, generator=generator)
        cdf = torch.cumsum(self.weights, 0)
        comp = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=self.num_components - 1)
        std = torch.sqrt(self.stds[comp] ** 2 + sigma**2)[:, None]
        return self.means[comp] + std * z

    def ode_solve(
        self, x: torch.Tensor, sigma_from: float, sigma_to: float, *, rtol: float = 1e-12, atol: float = 1e-13
    ) -> torch.Tensor:
        """The probability-flow ODE solution x(sigma_to) from x(sigma_from), same shape as x (float64).

        One component: the closed form. Several: DOP853 on dx/du = x - D(x, e^u), u = log sigma. A
        ``sigma_to`` of 0 is replaced by 1e-7 for mixtures (x(sigma) - x(0) = O(sigma^2) there).
        """
        if sigma_from <= 0 or sigma_to < 0:
            raise InputError("need sigma_from > 0 and sigma_to >= 0")
        flat = self._flat(x)
        if self.num_components == 1:
            mu, s2 = self.means[0], float(self.stds[0]) ** 2
            scale = math.sqrt(s2 + sigma_to**2) / math.sqrt(s2 + sigma_from**2)
            return (mu + (flat - mu) * scale).reshape(x.shape)
        from scipy.integrate import solve_ivp

        shape = flat.shape

        def rhs(u: float, y: np.ndarray) -> np.ndarray:
            xt = torch.from_numpy(y).reshape(shape)
            return (xt - self.denoise(xt, math.exp(u))).reshape(-1).numpy()

        u0, u1 = math.log(sigma_from), math.log(max(sigma_to, 1e-7))
        sol = solve_ivp(rhs, (u0, u1), flat.reshape(-1).numpy().copy(), method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        return torch.from_numpy(sol.y[:, -1].copy()).reshape(x.shape)
