"""UniPC (Zhao et al. 2023): unified predictor UniP-p and corrector UniC-p, data prediction, B(h) variants.

In sigma space (alpha = 1, lambda = -log sigma), a step from s0 to t with h = lambda_t - lambda_s0 and
hh = -h uses the previous outputs m_{s_k} at lambda_{s_k}, k = 1..p-1:

    r_k = (lambda_{s_k} - lambda_s0) / h,   D_k = (m_{s_k} - m_s0) / r_k,   r_p = 1,
    R_{ik} = r_k^(i-1),  b_i = E_{i+1}(hh) i! / B(h)   (i = 1..p),
    B(h) = hh ("bh1") or e^hh - 1 ("bh2"),  E_k as in :func:`skiptune.sampling._core.exprel_tail`.

Predictor: x~ = (sigma_t / sigma_s0) x - E_1(hh) m_s0 and x_pred = x~ - B(h) sum_k rho^p_k D_k with
rho^p = R[:-1, :-1]^-1 b[:-1] (rho^p = [1/2] for p = 2). Corrector (UniC, Alg. 2 of the paper): with
m_t = D(x_pred, t), x_t = x~ - B(h) (sum_{k<p} rho^c_k D_k + rho^c_p (m_t - m_s0)), rho^c = R^-1 b
(rho^c = [1/2] for p = 1). m_t is reused as the history of the next step, so the corrector costs no
extra NFE; it is skipped at the final step (it would need one). UniPC-p has order p + 1 with the
corrector and p without.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from skiptune.core.errors import InputError
from skiptune.sampling._core import (
    Callback,
    Denoiser,
    Evaluator,
    NoiseSource,
    check_sigmas,
    exprel_tail,
    finish,
    report,
    solver_steps_left,
    start,
)


def unipc_coefficients(rks: list[float], h: float, variant: str) -> tuple[np.ndarray, np.ndarray, float]:
    """``(R, b, B(h))`` of a UniPC step with p = len(rks) + 1 (rks: the r_k of the previous points)."""
    hh = -h
    if variant == "bh1":
        bh = hh
    elif variant == "bh2":
        bh = math.expm1(hh)
    else:
        raise InputError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    r = np.array([*rks, 1.0], dtype=np.float64)
    p = len(r)
    R = np.stack([r**i for i in range(p)])
    b = np.array([exprel_tail(hh, i + 1) * math.factorial(i) / bh for i in range(1, p + 1)], dtype=np.float64)
    return R, b, bh


def unipc_step(
    x: torch.Tensor, ms: list[torch.Tensor], lams: list[float], s_cur: float, s_next: float, order: int, variant: str
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Predictor of one UniPC step; returns ``(x_pred, corrector)``.

    ``corrector(m_t)`` returns the corrected state given the model output at ``(x_pred, s_next)``.
    History lists are newest last and hold at least ``order`` entries.
    """
    h = math.log(s_cur / s_next)
    lam0, m0 = lams[-1], ms[-1]
    rks = [(lams[-1 - k] - lam0) / h for k in range(1, order)]
    dks = [(ms[-1 - k] - m0) / rk for k, rk in zip(range(1, order), rks, strict=True)]
    R, b, bh = unipc_coefficients(rks, h, variant)
    x_base = (s_next / s_cur) * x - exprel_tail(-h, 1) * m0
    if order == 1:
        x_pred = x_base
    else:
        rho_p = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        x_pred = x_base - bh * sum(float(c) * d for c, d in zip(rho_p, dks, strict=True))

    def corrector(m_t: torch.Tensor) -> torch.Tensor:
        rho_c = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        res = float(rho_c[-1]) * (m_t - m0)
        for c, d in zip(rho_c[:-1], dks, strict=True):
            res = res + float(c) * d
        return x_base - bh * res

    return x_pred, corrector


def sample_unipc(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    order: int = 3,
    variant: Literal["bh1", "bh2"] = "bh1",
    use_corrector: bool = True,
    lower_order_final: bool = True,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseSource | None = None,
    denoise_to_zero: bool = False,
) -> torch.Tensor:
    """Multistep UniPC-p, p = ``order`` in 1..3 (official ``multistep`` loop, data prediction).

    Step i uses order min(order, i + 1) (warm-up); with ``lower_order_final`` also at most the
    number of steps left, a final step to 0 not counted, whatever the number of steps (official
    UniPC rule). The corrector runs at every step except the last. A step to sigma = 0 is
    x = D(x, sigma_i). One NFE per step.
    Variants: bh1 is recommended for < 10 steps unconditional, bh2 otherwise (UniPC paper, Sec. 4).

    Reference: the official UniPC (wl-zhao/UniPC, ``UniPC.sample(method="multistep")``, variant bh1,
    ``lower_order_final=True``, ``denoise_to_zero=False``) runs n steps on a grid ending at sigma_min, NFE = n;
    zju-pi/diff-sampler's UniPC takes the same loop. That is the convention
    :class:`~skiptune.experiment.generate.SamplingSpec` uses for it by default (``end="sigma_min"``);
    ``tests/test_sampling_conventions.py`` checks the loop against a transcription of the official one.
    """
    if order not in (1, 2, 3):
        raise InputError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise InputError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    s = check_sigmas(sigmas)
    steps = len(s) - 1
    ev = Evaluator(denoiser, x, extra_args)
    x = start(x, s)
    ms: list[torch.Tensor] = []
    lams: list[float] = []
    m_cur = ev(x, s[0], 0)
    for i in range(steps):
        s_cur, s_next = s[i], s[i + 1]
        ms = [*ms[-(order - 1) :], m_cur] if order > 1 else [m_cur]
        lams = [*lams[-(order - 1) :], -math.log(s_cur)] if order > 1 else [-math.log(s_cur)]
        last = i == steps - 1
        m_next = None
        if s_next == 0:
            x_next = m_cur  # h -> infinity limit; only possible at the last step
        else:
            p = min(order, i + 1)
            if lower_order_final:
                p = min(p, solver_steps_left(s, i))
            x_next, corrector = unipc_step(x, ms, lams, s_cur, s_next, p, variant)
            if not last:
                m_next = ev(x_next, s_next, i)  # at the predictor, reused as the next step's history
                if use_corrector:
                    x_next = corrector(m_next)
        report(callback, i, s_cur, s_next, x, m_cur, x_next)
        x = x_next
        if m_next is not None:
            m_cur = m_next
    return finish(ev, x, s, denoise_to_zero, callback)
