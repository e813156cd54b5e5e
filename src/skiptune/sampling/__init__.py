"""Sigma grids, samplers, ODE inversion, denoiser wrappers and an analytic oracle.

All samplers are pure functions over one denoiser ``D(x, sigma, **extra_args) -> x0`` in the EDM
sigma convention (x = y + sigma n); see :mod:`skiptune.sampling.samplers` for the shared signature
and the NFE rules.
"""

from skiptune.sampling._core import NonFiniteError, denoiser_input_dtype
from skiptune.sampling.adams import sample_deis, sample_ipndm
from skiptune.sampling.denoisers import CFGDenoiser, EDMDenoiser, VPDenoiser
from skiptune.sampling.distilled import sample_consistency
from skiptune.sampling.edm import sample_edm_sde, sample_euler, sample_heun
from skiptune.sampling.exponential import (
    sample_ddim,
    sample_dpmpp,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_dpmpp_3m_order3,
)
from skiptune.sampling.grids import (
    GRIDS,
    alphas_cumprod,
    discrete_sigmas,
    discrete_time_uniform_sigmas,
    discrete_timesteps,
    edm_sigmas,
    logsnr_sigmas,
    make_sigmas,
    sigmas_from_alphas_cumprod,
    vp_time_quadratic_sigmas,
    vp_time_sigmas,
    vp_time_uniform_sigmas,
)
from skiptune.sampling.inversion import inversion_sigmas, invert
from skiptune.sampling.noise import SeedNoise, parse_seeds, seed_batches
from skiptune.sampling.oracle import GaussianMixture
from skiptune.sampling.samplers import (
    DEFAULT_END,
    DETERMINISTIC,
    ENDS,
    EVALS_PER_STEP,
    REFERENCES,
    SAMPLERS,
    get_sampler,
    nfe_for_sigmas,
    nfe_for_steps,
    revision_fields,
    sample,
    sampler_fields,
    steps_for_nfe,
)
from skiptune.sampling.unipc import sample_unipc

__all__ = [
    "DEFAULT_END",
    "DETERMINISTIC",
    "ENDS",
    "REFERENCES",
    "EVALS_PER_STEP",
    "GRIDS",
    "SAMPLERS",
    "CFGDenoiser",
    "EDMDenoiser",
    "GaussianMixture",
    "NonFiniteError",
    "SeedNoise",
    "VPDenoiser",
    "alphas_cumprod",
    "denoiser_input_dtype",
    "discrete_sigmas",
    "discrete_time_uniform_sigmas",
    "discrete_timesteps",
    "edm_sigmas",
    "get_sampler",
    "inversion_sigmas",
    "invert",
    "logsnr_sigmas",
    "make_sigmas",
    "nfe_for_sigmas",
    "nfe_for_steps",
    "parse_seeds",
    "revision_fields",
    "sample",
    "sample_consistency",
    "sample_ddim",
    "sample_deis",
    "sample_dpmpp",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_dpmpp_3m_order3",
    "sample_edm_sde",
    "sample_euler",
    "sample_heun",
    "sample_ipndm",
    "sample_unipc",
    "sampler_fields",
    "seed_batches",
    "sigmas_from_alphas_cumprod",
    "steps_for_nfe",
    "vp_time_quadratic_sigmas",
    "vp_time_sigmas",
    "vp_time_uniform_sigmas",
]
