"""Rerun the paper's result tables: each row of seed 003's Tables 2-7 and 10, untuned and tuned.

Every row comes from :mod:`skiptune.skip.presets` (the paper's rho and FIDs, with citations) and from
the model family's settings here (sampler conventions, guidance, grid, the checkpoint authors' own
published FID). :func:`run_table` scores the rows of the families the checkpoint belongs to through
:func:`~skiptune.runs.sweep.run_sweep`: paired seed sets, every point one run in the results store (a
killed run resumes with nothing recomputed), torchrun-aware.

A *sanity row* opens every table: the checkpoint authors' own FID at their own settings (e.g. EDM's
README), untuned, so that a broken feature network or reference file shows before any Skip-Tuning
number is read.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from skiptune.core.denoiser import DenoiserInfo
from skiptune.core.errors import InputError
from skiptune.core.stats import Estimate, paired_difference
from skiptune.experiment import ModelRef, SamplingSpec, Scorer
from skiptune.runs.sweep import SweepSpec, run_sweep
from skiptune.skip import canonical_rule
from skiptune.skip.presets import Preset, rule_presets
from skiptune.store import Store


@dataclass(frozen=True)
class Sanity:
    """The checkpoint authors' own published FID and the settings behind it."""

    sampler: str
    nfe: int
    fid: float
    source: str
    options: dict[str, Any] = field(default_factory=dict)
    end: str | None = None
    grid: str | None = None


@dataclass(frozen=True)
class Family:
    """A model family of the paper's tables: which checkpoint, what its samples are, how it is sampled."""

    name: str
    checkpoint: str  # the public file the paper's numbers come from
    title: str
    shape: tuple[int, int, int]  # (channels, resolution, classes) of the network, for recognising a checkpoint
    network: str  # the class of the loaded network (with the shape, what recognises a checkpoint)
    grid: str = "edm"
    guidance: float | None = None  # classifier-free guidance W (D_u + W (D_c - D_u))
    latent: bool = False  # samples are latents: needs --vae
    needs: str | None = None  # why its rows cannot run yet (None: they run)
    sanity: Sanity | None = None
    sampler: str | None = None  # for rows where the paper names none
    note: str = ""
    sigma_max: float | None = None  # the sigma the sampler starts from, where it is not the network's own
    recognised: bool = True  # False: never detected from a checkpoint's shape (pass --family)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("edm-imagenet64", "edm-imagenet-64x64-cond-adm.pkl", "EDM, ImageNet 64x64, class-conditional (ADM)",
           (3, 64, 1000), "EDMPrecond",
           sanity=Sanity("edm_sde", 511, 1.36, "NVlabs/edm example.py (stochastic sampler, 256 steps, S_churn 40, "
                         "S_min 0.05, S_max 50, S_noise 1.003; EDM reports the minimum over 3 seed sets)",
                         {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}),
           sampler="heun", note="no guidance, as the paper (Sec. 3)"),
    Family("edm-afhqv2-64", "edm-afhqv2-64x64-uncond-vp.pkl", "EDM, AFHQv2 64x64, unconditional (DDPM++)",
           (3, 64, 0), "EDMPrecond",
           sanity=Sanity("heun", 79, 1.96, "NVlabs/edm example.py (Heun, 40 steps; EDM reports the minimum over 3 "
                         "seed sets)")),
    Family("uvit-imagenet256", "imagenet256_uvit_huge.pth", "U-ViT-H/2, ImageNet 256x256 latents, class-conditional",
           (4, 32, 1000), "UViTPrecond", grid="discrete-time-uniform", guidance=1.4, latent=True, sampler="dpmpp_3m",
           sanity=Sanity("dpmpp_3m", 50, 2.29, "baofff/U-ViT README (U-ViT-H/2, ImageNet 256, cfg scale 0.4, 50 "
                         "DPM-Solver steps)"),
           note="U-ViT's scale 0.4 (eps_c + 0.4 (eps_c - eps_u)) is W = 1.4; U-ViT samples with its singlestep "
                "DPM-Solver ('fast', order 3, 50 steps, time-uniform in t over [1/1000, 1]), skiptune with the "
                "multistep DPM-Solver++(3M) on the same time-uniform grid; the network's time input is the same "
                "continuous 1000 t"),
    Family("ldm-imagenet256", "cin256-v2.ckpt",
           "LDM-4 (CompVis cin256-v2), ImageNet 256x256 latents, class-conditional", (3, 64, 1000), "LDMPrecond",
           grid="discrete", guidance=1.5, latent=True, sampler="ddim",
           sanity=Sanity("ddim", 250, 3.60, "Rombach et al. 2022 (latent diffusion), Table 3: LDM-4-G on ImageNet "
                         "256, classifier-free guidance scale 1.5 (the CompVis README's FID 3.6, no sampler settings "
                         "given there); run here with DDIM, eta 0, 250 steps"),
           note="DDIM (eta 0) on DDIM's uniform timestep skip (grid 'discrete': t = 0, T/n, ...; LDM's DDIMSampler "
                "uses the same skip shifted by one timestep), with LDM's guidance e_u + s (e_c - e_u), s = 1.5, which "
                "is W = 1.5, the unconditional pass on the null class 1000"),
    Family("cd-edm-imagenet64", "cd_imagenet64_lpips.pt", "Consistency distillation of EDM, ImageNet 64x64 "
           "(openai/consistency_models; load with --arch cd-imagenet64)", (3, 64, 1000), "CMPrecond",
           sanity=Sanity("consistency", 1, 6.20, "Song et al. 2023 (consistency models), one-step CD on ImageNet "
                         "64x64; seed 003 Table 3 reproduces 6.85"),
           sampler="consistency"),
    Family("di-edm-imagenet64", "a Diff-Instruct generator file (none is public; --family di-edm-imagenet64)",
           "Diff-Instruct one-step generator "
           "(an EDM ImageNet-64 network driven at its initial sigma; pass --family di-edm-imagenet64)", (3, 64, 1000),
           "EDMPrecond", sampler="consistency", sigma_max=5.0, recognised=False,
           sanity=Sanity("consistency", 1, 4.24, "seed 003 Table 3 (DI EDM*, the Diff-Instruct paper's FID)"),
           note="one-step generation x = G(5 z) = D(5 z, 5): seed 003 Table 1 gives the DI generator's initial sigma "
                "as 5; no DI generator checkpoint is public, so the rows run on a file you provide")
)}

#: Table 5 quotes EDM at 79 NFE untuned (Heun, 40 steps); the row is measured with the same checkpoint
_EXTRA_ROWS = {"5": [("edm-imagenet64/heun/79", "edm-imagenet64", "heun", 79, "none", 2.22,
                      "Table 5 quotes EDM's Heun at 79 NFE (2.22) as the ODE limit; untuned only")]}
#: Table 10 rows give no untuned FID: the untuned model at the same steps, from the table named here
_BASELINE_OF = {"edm-imagenet64/10-steps/decreasing": ("edm-imagenet64/heun/19", "heun"),
                "ldm-imagenet256/10-steps/increasing": ("ldm-imagenet256/10-steps", None),
                "uvit-imagenet256/50-steps/increasing": ("uvit-imagenet256/50-steps", None)}


@dataclass(frozen=True)
class Row:
    """One row of a table: untuned and tuned at the paper's settings, and the FIDs the paper prints."""

    table: str
    name: str
    family: str
    sampler: str | None
    steps: int | None
    nfe: int | None
    rule: str
    paper_baseline: float | None
    paper_tuned: float | None
    note: str = ""
    sanity: bool = False
    interpreted: bool = False

    @property
    def fam(self) -> Family:
        return FAMILIES[self.family]

    @property
    def needs(self) -> str | None:
        """Why this row cannot run yet, or None."""
        if self.fam.needs:
            return self.fam.needs
        if self.sampler is None:
            return "the paper names no sampler for this row and the family sets none"
        return None

    @property
    def tuned(self) -> bool:
        return not canonical_rule(self.rule).is_identity

    def sampling(self) -> SamplingSpec:
        """The sampling of this row: the paper's sampler at its NFE (or steps) and the family's grid and guidance."""
        if self.needs:
            raise InputError(f"row {self.name} cannot run: it needs {self.needs}")
        fam = self.fam
        grid = (fam.sanity.grid if self.sanity and fam.sanity and fam.sanity.grid else fam.grid)
        opts = dict(fam.sanity.options) if self.sanity and fam.sanity else {}
        common = dict(grid=grid, guidance=fam.guidance, options=opts, sigma_max=fam.sigma_max)
        if self.nfe is not None:
            return SamplingSpec(self.sampler, nfe=self.nfe, **common)
        return SamplingSpec(self.sampler, steps=self.steps, **common)


def _tables_of(preset: Preset) -> list[str]:
    return re.findall(r"\d+", preset.source)


def _row(table: str, p: Preset) -> Row:
    fam = FAMILIES[p.family]
    sampler, steps, nfe, interpreted, note = p.sampler, p.steps, p.nfe, p.interpreted, p.note
    baseline = p.baseline_fid
    if p.name in _BASELINE_OF:
        source, sampler_of = _BASELINE_OF[p.name]
        ref = rule_presets()[source] if source in rule_presets() else None
        baseline = ref.baseline_fid if ref else None
        sampler = sampler or sampler_of
        if ref is not None:
            note = (note + "; " if note else "") + f"untuned FID from {ref.source} ({ref.name})"
    if sampler == "onestep":  # one-step generation is the consistency sampler with one evaluation
        sampler = "consistency"
    if sampler is None and fam.sampler is not None and fam.needs is None:
        sampler, interpreted = fam.sampler, True
        note = (note + "; " if note else "") + f"the paper names no sampler: {sampler} ({fam.note})"
    if sampler == "heun" and nfe is None and steps is not None:
        nfe = 2 * steps - 1  # EDM's Heun: N steps, 2N - 1 evaluations (Table 4)
    return Row(table, p.name, p.family, sampler, steps, nfe, p.rule, baseline, p.tuned_fid, note,
               interpreted=interpreted)


def _sanity_row(table: str, fam: Family) -> Row:
    s = fam.sanity
    return Row(table, f"{fam.name}/sanity", fam.name, s.sampler, None, s.nfe, "none", s.fid, None,
               f"the checkpoint authors' own FID: {s.source}", sanity=True)


def tables() -> dict[str, list[Row]]:
    """Every table the presets cover, ``{"2": [rows], ...}``, with a sanity row per family that can run."""
    out: dict[str, list[Row]] = {}
    for p in rule_presets().values():
        for t in _tables_of(p):
            out.setdefault(t, []).append(_row(t, p))
    for t, extra in _EXTRA_ROWS.items():
        for name, family, sampler, nfe, rule, fid, note in extra:
            out.setdefault(t, []).append(Row(t, name, family, sampler, None, nfe, rule, fid, None, note))
    for t, rows in out.items():
        families = list(dict.fromkeys(r.family for r in rows))
        sanity = [_sanity_row(t, FAMILIES[f]) for f in families if FAMILIES[f].sanity and not FAMILIES[f].needs]
        out[t] = sanity + rows
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def table_rows(table: str, *, rows: list[str] | None = None) -> list[Row]:
    """The rows of ``table`` (``"2"`` or ``"table2"``), optionally only those named in ``rows``."""
    key = str(table).lower().removeprefix("table").strip()
    all_tables = tables()
    if key not in all_tables:
        raise InputError(f"the presets cover no table {table!r}; tables: {', '.join(all_tables)} "
                         "(skiptune reproduce --list shows their rows)")
    out = all_tables[key]
    if rows:
        names = {r.name for r in out}
        unknown = [r for r in rows if r not in names]
        if unknown:
            raise InputError(f"table {key} has no row {', '.join(unknown)}; its rows: {', '.join(sorted(names))}")
        out = [r for r in out if r.name in rows]
    return out


def detect_family(net: nn.Module) -> str | None:
    """The family whose network shape (channels, resolution, classes) ``net`` has, or None."""
    info = DenoiserInfo.of(net)
    shape = (info.img_channels, info.img_resolution, info.label_dim)
    hits = [f.name for f in FAMILIES.values()
            if f.shape == shape and f.network == type(net).__name__ and f.needs is None and f.recognised]
    return hits[0] if len(hits) == 1 else None


@dataclass
class RowResult:
    row: Row
    baseline: Estimate | None = None
    tuned: Estimate | None = None
    nfe: int | None = None

    @property
    def difference(self) -> Estimate | None:
        """Tuned minus untuned, paired over the same seed sets."""
        if self.baseline is None or self.tuned is None:
            return None
        return paired_difference(self.tuned, self.baseline)


@dataclass(frozen=True)
class PlanRow:
    row: Row
    runnable: bool
    why: str
    samples: int
    evaluations: int  # network forward passes (guidance doubles them)
    nfe: int | None


def plan(rows: list[Row], family: str | None, *, n: int, seed_sets: int) -> list[PlanRow]:
    """What running ``rows`` on a checkpoint of ``family`` costs: samples and network forward passes per row."""
    out = []
    for r in rows:
        why = r.needs or ("" if r.family == family else f"needs a {r.family} checkpoint ({r.fam.checkpoint})")
        if why:
            out.append(PlanRow(r, False, why, 0, 0, r.nfe))
            continue
        spec = r.sampling()
        samples = n * seed_sets * (2 if r.tuned else 1)
        per = spec.resolved_nfe * (2 if spec.guidance is not None else 1)
        out.append(PlanRow(r, True, "", samples, samples * per, spec.resolved_nfe))
    return out


def time_forward(net: nn.Module, *, batch: int, device: str | torch.device = "cpu", repeats: int = 3) -> float:
    """Median seconds of one network forward at ``batch`` samples on ``device`` (after one warm-up call)."""
    info = DenoiserInfo.of(net)
    device = torch.device(device)
    net = net.to(device).eval()
    x = torch.randn(batch, *info.shape, device=device)
    sigma = torch.full((batch,), 1.0, device=device)
    labels = torch.eye(info.label_dim, device=device)[torch.zeros(batch, dtype=torch.long)] if info.label_dim else None
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            net(x, sigma, labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run_table(rows: list[Row], net: nn.Module, family: str, *, scorer: Scorer, store: Store | None, n: int,
              seed_sets: int = 1, model: ModelRef | None = None, batch: int = 250, device: str = "cpu",
              decoder: Any | None = None, dist: Any | None = None, progress: bool = True,
              cache: str | None = None) -> list[RowResult]:
    """Score the rows of ``family`` (untuned and tuned over ``seed_sets`` paired sets of ``n`` seeds); rows of
    other families or that cannot run yet come back without estimates. ``cache`` is a feature-cache policy
    (:mod:`skiptune.skip.cache`) applied to every row, stored in each point (a cached row is not the paper's)."""
    from skiptune.runs.sweep import seed_sets as make_sets

    if n < 2:
        raise InputError(f"need at least 2 samples per seed set, got n={n}")
    sets = make_sets(f"0-{n - 1}", seed_sets)
    out = []
    for r in rows:
        if r.needs or r.family != family:
            out.append(RowResult(r))
            continue
        spec = r.sampling()
        rules = ["none", r.rule] if r.tuned else ["none"]
        sweep = SweepSpec(rules=rules, samplers=[spec.sampler], nfes=[spec.resolved_nfe], seed_sets=sets,
                          grid=spec.grid, batch=batch, sampler_options={spec.sampler: dict(spec.options)},
                          end=spec.end, guidance=spec.guidance, cache=cache, sigma_max=spec.sigma_max)
        res = run_sweep(net, sweep, store=store, scorer=scorer, model=model, progress=progress, device=device,
                        dist=dist, decoder=decoder)
        if dist is not None and getattr(dist, "enabled", False) and not dist.is_main:
            out.append(RowResult(r, nfe=spec.resolved_nfe))
            continue
        by_rule = {str(canonical_rule(x.rule)): x.estimate for x in res}
        tuned = by_rule.get(str(canonical_rule(r.rule))) if r.tuned else None
        out.append(RowResult(r, by_rule.get(str(canonical_rule("none"))), tuned, spec.resolved_nfe))
    return out
