"""GPU-grade hooks: nothing read back from the device inside a hook, torch.compile without graph breaks or
recompiles caused by the hooks, and half / bfloat16 networks under every rule, mode and FreeU.

This machine has no GPU, so host reads are caught by a TorchFunctionMode, active only while the network
runs, that refuses every operation that would copy a tensor's value to the host (on a GPU each of them
waits for all queued work): ``.item()``, ``bool()``, ``float()``, ``int()``, ``.tolist()``, ``.cpu()``,
``.numpy()``, an index or a format of a tensor, and ``.to("cpu")``. The untuned networks pass under it
(``test_untuned_networks_read_nothing_back``), so a failure with a rule attached is the hooks' doing.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from conftest import randomize
from skiptune.adapters import find_adapter
from skiptune.core.errors import InputError
from skiptune.core.sigma import publish_sigma
from skiptune.nets import build_preset
from skiptune.nets.presets import PRESETS
from skiptune.sampling import EDMDenoiser, alphas_cumprod, sample
from skiptune.skip import freeu, parse_rule, skip_sites, skip_tuning

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
# U-ViT with the discrete (Stable Diffusion) schedule: the continuous-VP U-ViT converts sigma to its time
# input through numpy (UViTPrecond.timestep), a host read of the network itself, outside any hook
NETS = ["ddpmpp-tiny", "adm-tiny", "uvit-imagenet256-huge-tiny",
        pytest.param("diffusers-unet2d", marks=pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers missing"))]
GRID = torch.tensor([80.0, 2.0, 0.0])  # Heun: 3 network calls, the sampler state in float64
FREEU = "b1=1.2,b2=1.4,s1=0.9,s2=0.2"


# ramps over the step index and over VP time, where this version of skiptune has them
TIME_RAMPS = ("ramp:up:0.6:step:80,17.5,2.5,0.17,0.002", "ramp:down:0.7:vp")


def rule_kinds(k: int) -> list[str]:
    """One rule of every kind (and compositions) for a network with k skip sites."""
    sites = ",".join(f"{0.5 + 0.4 * i / max(k - 1, 1):.3g}" for i in range(k))
    kinds = ["const:0.7", "layer:0.6", "layer:0.55:1:paper", f"sites:{sites}", "ramp:down:0.7",
             "ramp:up:0.8:0.01:50:log", "window:0.5:5:layer:0.6", "layer:0.7*ramp:down:0.9",
             "window:0.1:2:ramp:up:0.5*const:1.1"]
    for text in TIME_RAMPS:
        try:
            parse_rule(text)
        except ValueError:
            continue
        kinds.append(text)
    return kinds


# --- the networks ------------------------------------------------------------------------------------

class Case:
    """A network, the module to tune, its denoiser, a float64 starting state and conditioning."""

    def __init__(self, name: str, net: nn.Module, denoiser, x: torch.Tensor, extra: dict, unet=None):
        self.name, self.net, self.denoiser, self.x, self.extra, self.unet = name, net, denoiser, x, extra, unet
        self.k = len(skip_sites(net))
        self.modes = find_adapter(net).modes


def make_case(name: str) -> Case:
    g = torch.Generator().manual_seed(0)
    if name == "diffusers-unet2d":
        from diffusers_models import tiny_unet2d
        from skiptune.adapters.diffusers import attach_schedule
        from skiptune.io.diffusers import DiffusersDenoiser

        unet = tiny_unet2d()
        abar = alphas_cumprod(1000, "linear")
        attach_schedule(unet, abar)
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=g) * 80
        return Case(name, unet, DiffusersDenoiser(unet, abar), x, {}, unet=unet)
    net = randomize(build_preset(name), seed=1, scale=0.15 if "uvit" in name else 0.05).eval()
    x = torch.randn(2, net.img_channels, net.img_resolution, net.img_resolution, dtype=torch.float64,
                    generator=g) * 80
    extra = {"class_labels": torch.eye(net.label_dim)[[1, 3]]} if net.label_dim else {}
    return Case(name, net, EDMDenoiser(net), x, extra)


_CASES: dict[str, Case] = {}


def get_case(name: str) -> Case:
    if name not in _CASES:
        _CASES[name] = make_case(name)
    return _CASES[name]


@pytest.fixture(params=NETS)
def case(request) -> Case:
    return get_case(request.param)


# the OpenAI UNet family (guided-diffusion, consistency models) as well, where this version has it
OPENAI = [name for name in ("adm-guided-imagenet64-tiny", "cd-imagenet64-tiny") if name in PRESETS]


# --- refusing host reads -----------------------------------------------------------------------------

_T = torch.Tensor
HOST_READS = {_T.item, _T.__bool__, _T.__float__, _T.__int__, _T.__index__, _T.tolist, _T.cpu, _T.numpy,
              _T.__format__}


class HostReadError(AssertionError):
    pass


class RefuseHostReads(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS:
            raise HostReadError(f"{getattr(func, '__name__', func)} of a tensor inside the network call")
        if func is _T.to and ("cpu" in args[1:] or kwargs.get("device") == "cpu"):
            raise HostReadError("a copy to the host inside the network call")
        return func(*args, **kwargs)


@contextlib.contextmanager
def refusing_host_reads(module: nn.Module):
    """Every call of ``module`` (hooks included: the mode is entered by the first pre-hook and left by the
    last forward hook) runs under :class:`RefuseHostReads`."""
    mode = RefuseHostReads()

    def enter(m, args):
        mode.__enter__()

    def leave(m, args, output):
        mode.__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(enter, prepend=True),
               module.register_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_strict(case: Case) -> torch.Tensor:
    """A sampler run (one sigma per step), a call with one sigma per sample, and for a diffusers UNet the
    calls a pipeline makes (a Python timestep, a timestep per sample), all refusing host reads."""
    with torch.no_grad(), refusing_host_reads(case.net):
        out = sample("heun", case.denoiser, case.x, GRID, extra_args=case.extra)
        mixed = case.denoiser(case.x, torch.tensor([0.3, 3.0], dtype=torch.float64), **case.extra)
        assert torch.isfinite(out).all() and torch.isfinite(mixed).all()
        if case.unet is not None:
            x = case.x.to(torch.float32) / 80
            case.unet(x, 250, return_dict=False)
            case.unet(x, torch.tensor([10, 600]), return_dict=False)
    return out


@pytest.mark.parametrize("name", NETS + OPENAI)
def test_untuned_networks_read_nothing_back(name):
    run_strict(get_case(name))


@pytest.mark.parametrize("name", NETS + OPENAI)
def test_hooks_read_nothing_back(name):
    """Every rule kind in concat mode, the residual and norm modes, and FreeU: no host read in any hook."""
    case = get_case(name)
    plain = run_strict(case)
    combos = [(rule, "concat", None) for rule in rule_kinds(case.k)]
    combos += [(rule, mode, None) for mode in case.modes if mode != "concat"
               for rule in ("layer:0.6", "layer:0.7*ramp:down:0.9", "window:0.5:5:layer:0.6")]
    combos += [("none", "concat", FREEU), ("const:0.8", "concat", FREEU), ("ramp:down:0.7", "concat", FREEU)]
    failures = []
    for rule, mode, fu in combos:
        try:
            tuning = skip_tuning(case.net, rule, mode=mode)
        except InputError as exc:  # a mode this network has no target for (e.g. no inner shortcut)
            assert mode != "concat", exc
            continue
        with tuning, freeu(case.net, fu) if fu else contextlib.nullcontext():
            try:
                out = run_strict(case)
            except HostReadError as exc:
                failures.append(f"{rule} ({mode}{', FreeU' if fu else ''}): {exc}")
                continue
        if mode == "concat":
            assert not torch.equal(out, plain), f"{rule} changed nothing"
    assert not failures, f"{case.name}: host reads in hooks:\n" + "\n".join(failures)


@contextlib.contextmanager
def cuda_sync_errors(module: nn.Module):
    """Every call of ``module`` runs with ``torch.cuda.set_sync_debug_mode("error")``."""
    def enter(m, args):
        torch.cuda.set_sync_debug_mode("error")

    def leave(m, args, output):
        torch.cuda.set_sync_debug_mode("default")

    handles = [module.register_forward_pre_hook(enter, prepend=True),
               module.register_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["ddpmpp-tiny", "adm-tiny"])
def test_no_cuda_synchronisation_inside_the_network_call(name):
    """On a GPU the same as test_hooks_read_nothing_back, checked by CUDA itself."""
    case = make_case(name)
    net = case.net.cuda()
    den = EDMDenoiser(net)
    extra = {k: v.cuda() for k, v in case.extra.items()}
    x = case.x.cuda()
    for rule in [None, *rule_kinds(case.k)]:
        with torch.no_grad(), skip_tuning(net, rule), cuda_sync_errors(net):
            sample("heun", den, x, GRID, extra_args=extra)
            den(x, torch.tensor([0.3, 3.0], dtype=torch.float64, device="cuda"), **extra)


# --- torch.compile -----------------------------------------------------------------------------------

class CountingBackend:
    """A torch.compile backend that runs the captured graph as is and counts the graphs it was given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture()
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compile_inputs(net):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, net.img_channels, net.img_resolution, net.img_resolution, generator=g)
    return x, torch.tensor([1.3, 1.3])


@pytest.mark.parametrize("name", ["ddpmpp-tiny", "adm-tiny"])
def test_compiled_hooks_add_no_graph_break(name, fresh_dynamo):
    net = make_case(name).net
    x, s = compile_inputs(net)

    def explain():
        torch._dynamo.reset()
        with torch.no_grad():
            return torch._dynamo.explain(net)(x, s)

    plain = explain()
    assert plain.graph_break_count == 0, plain.break_reasons  # sigma publication traces too
    combos = [(rule, "concat", None) for rule in rule_kinds(len(skip_sites(net)))]
    combos += [("layer:0.7*ramp:down:0.9", "residual", None), ("window:0.5:5:layer:0.6", "norm", None),
               ("none", "concat", FREEU), ("ramp:down:0.7", "concat", FREEU)]
    if name != "ddpmpp-tiny":  # the other network: one sigma-free and one sigma-dependent rule, with FreeU
        combos = [("layer:0.6", "residual", None), ("layer:0.7*ramp:down:0.9", "concat", FREEU)]
    for rule, mode, fu in combos:
        with skip_tuning(net, rule, mode=mode), freeu(net, fu) if fu else contextlib.nullcontext():
            tuned = explain()
        assert (tuned.graph_count, tuned.graph_break_count) == (1, 0), (rule, mode, fu, tuned.break_reasons)


def test_compiled_network_does_not_recompile_when_rho_changes(fresh_dynamo):
    net = make_case("ddpmpp-tiny").net
    x, s = compile_inputs(net)
    backend = CountingBackend()
    cnet = torch.compile(net, backend=backend)

    def check(sigma=s):
        with torch.no_grad():
            torch.testing.assert_close(cnet(x, sigma), net(x, sigma), rtol=0, atol=0)

    check()  # untuned: 1 graph
    with skip_tuning(net, "const:0.7"):  # hooks attached after the network was compiled are seen
        check()
    graphs = backend.graphs
    assert graphs == 2
    for rule in ("const:0.8", "const:1.3", "layer:0.6", "layer:0.7", "layer:0.5:1:paper",
                 rule_kinds(len(skip_sites(net)))[3]):
        with skip_tuning(net, rule):
            check()
    with skip_tuning(net, "layer:0.6") as tuning:
        check()
        tuning.set_rule("layer:0.8")  # rho written into the buffer in place
        check()
    check()  # untuned again: its graph is reused
    assert backend.graphs == graphs, "a new rho of the same kind recompiled"
    # a sigma-dependent rule: rho computed in the graph from the published sigma tensor
    with skip_tuning(net, "layer:0.7*ramp:down:0.9"):
        check()
        graphs = backend.graphs
        for sigma in ([0.01, 0.01], [5.0, 5.0], [80.0, 80.0], [0.2, 40.0]):
            check(torch.tensor(sigma))
        assert backend.graphs == graphs, "a new sigma recompiled"
    # a sampler run through the compiled network: one graph for its float64 sigma, then none per step. The grid's
    # sigmas are exact in float32, so the graph (rho from the float32 sigma the preconditioner publishes) and
    # the eager hooks (rho from the sampler's float) agree exactly
    den = EDMDenoiser(cnet)
    x64 = x.to(torch.float64) * 80
    with torch.no_grad(), skip_tuning(net, "ramp:down:0.7"):
        first = sample("heun", den, x64, torch.tensor([80.0, 5.0, 0.5, 0.0]))
        graphs = backend.graphs
        sample("heun", den, x64, torch.tensor([60.0, 3.0, 0.3, 0.0]))
        assert backend.graphs == graphs
        torch.testing.assert_close(first, sample("heun", EDMDenoiser(net), x64, torch.tensor([80.0, 5.0, 0.5, 0.0])),
                                   rtol=0, atol=0)


# --- half and bfloat16 -------------------------------------------------------------------------------

class HalfPath(nn.Module):
    """What an EDM preconditioner with ``use_fp16=True`` runs on a GPU, run on the CPU: the coefficients in
    float32 around the UNet called in ``dtype`` (its layers cast their weights to the input's dtype)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x, sigma, class_labels=None):
        net = self.net
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        labels = class_labels.to(torch.float32).reshape(-1, net.label_dim) if net.label_dim else None
        c_skip, c_out, c_in, c_noise = net.coefficients(sigma)
        with publish_sigma(sigma.flatten()):
            f_x = net.model((c_in * x).to(self.dtype), c_noise.flatten(), class_labels=labels)
        return c_skip * x + c_out * f_x[:, : net.img_channels].to(torch.float32)


BLOCKS = ("UNetBlock", "ResnetBlock2D", "Block", "ResBlock")  # EDM UNets, diffusers, U-ViT, openai UNet
STRONG = "const:0.3"  # a rule whose effect every precision resolves (several times the rounding error)


def tolerance(net: nn.Module, dtype: torch.dtype) -> float:
    """Relative L2 error allowed against the float32 result: 4 sqrt(L) eps = 8 sqrt(L) u.

    eps is the dtype's machine epsilon (2^-10 for float16, 2^-7 for bfloat16) and u = eps/2 its unit
    roundoff, the relative error of storing one value in the dtype. L is the number of residual or
    transformer blocks on the network's path; each stores about c = 8 intermediate results in the dtype
    (two convolutions, two normalisations, the embedding modulation, the residual sum, attention), each
    with a relative error up to u, and the independent errors of the L sequential blocks add like a random
    walk: c sqrt(L) u. Three Heun calls on the float64 state do not compound them (each call's error is
    absorbed into the next state, not amplified). Measured on the tiny presets: 0.015 to 0.4 of the bound.
    """
    blocks = sum(type(m).__name__ in BLOCKS for m in net.modules())
    return 4 * math.sqrt(blocks) * torch.finfo(dtype).eps


def precision_paths(case: Case, dtype: torch.dtype):
    """``(label, tuned network, denoiser)`` running the case's network in ``dtype``."""
    if case.unet is not None:
        from skiptune.io.diffusers import DiffusersDenoiser

        unet = copy.deepcopy(case.unet).to(dtype)
        from skiptune.adapters.diffusers import attach_schedule

        attach_schedule(unet, case.denoiser.alphas_cumprod)
        yield f"UNet in {dtype}", unet, DiffusersDenoiser(unet, case.denoiser.alphas_cumprod)
        return
    if case.name in OPENAI:  # their preconditioners compute in float32 around the network: autocast it
        yield f"autocast to {dtype}", case.net, EDMDenoiser(case.net, autocast=dtype)
        return
    if "uvit" in case.name:
        net = copy.deepcopy(case.net).to(dtype)
        yield f"U-ViT in {dtype}", net, EDMDenoiser(net)
        return
    yield f"use_fp16 path in {dtype}", case.net, EDMDenoiser(HalfPath(case.net, dtype))
    yield f"autocast to {dtype}", case.net, EDMDenoiser(case.net, autocast=dtype)
    if dtype == torch.bfloat16:
        net = copy.deepcopy(case.net).to(dtype)
        yield "weights in bfloat16", net, EDMDenoiser(net)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_networks_under_every_rule_mode_and_freeu(case, dtype):
    tol = tolerance(case.net, dtype)
    combos = [(rule, "concat", None) for rule in [STRONG, *rule_kinds(case.k)]]
    combos += [(rule, mode, None) for mode in case.modes if mode != "concat"
               for rule in ("layer:0.6", "layer:0.7*ramp:down:0.9")]
    combos += [("none", "concat", FREEU), ("layer:0.7*ramp:down:0.9", "concat", FREEU)]
    if "norm" in case.modes:
        combos.append(("const:0.8", "norm", FREEU))

    def run(net, den, rule, mode, fu):
        with torch.no_grad(), skip_tuning(net, rule, mode=mode), freeu(net, fu) if fu else contextlib.nullcontext():
            return sample("heun", den, case.x, GRID, extra_args=case.extra)

    with torch.no_grad():
        plain = sample("heun", case.denoiser, case.x, GRID, extra_args=case.extra)
    for rule, mode, fu in combos:
        try:
            want = run(case.net, case.denoiser, rule, mode, fu)
        except InputError:
            assert mode != "concat"
            continue
        for label, net, den in precision_paths(case, dtype):
            got = run(net, den, rule, mode, fu)
            what = f"{case.name}, {label}, {rule} ({mode}{', FreeU' if fu else ''})"
            assert got.dtype == torch.float64 and torch.isfinite(got).all(), what
            err = ((got - want).norm() / want.norm()).item()
            assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"
            if rule == STRONG:  # the rule acts in this precision: a hook doing nothing would give err = effect
                effect = ((want - plain).norm() / plain.norm()).item()
                assert err < effect / 4, f"{what}: error {err:.3g} against an effect of the rule of {effect:.3g}"


# --- feature-cache policies --------------------------------------------------------------------------

CACHED = ["ddpmpp-tiny", "adm-tiny", "uvit-imagenet256-huge-tiny", *OPENAI,
          pytest.param("diffusers-unet2d", marks=pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers missing"))]


def cache_policies(case: Case) -> list[str]:
    if case.unet is not None:  # diffusers: partial passes resume at an up block's first resnet (branch 1 here)
        return ["encoder:keys=0", "deepcache:keys=0:branch=1"]
    deep = [f"deepcache:keys=0:branch={b}" for b in sorted({0, case.k - 1})]
    return deep if "uvit" in case.name else ["encoder:keys=0", *deep]


@pytest.mark.parametrize("name", CACHED)
def test_cache_policies_read_nothing_back(name):
    """Key and partial passes, alone and with a sigma-dependent rule: no host read inside the network call."""
    from skiptune.skip import feature_cache

    case = get_case(name)
    plain = run_strict(case)
    for policy in cache_policies(case):
        for rule in ("none", "layer:0.7*ramp:down:0.9"):
            with feature_cache(case.net, policy) as fc, skip_tuning(case.net, rule):
                out = run_strict(case)
            assert fc.stats.partial >= 2, policy
            assert not torch.equal(out, plain), f"{policy} with {rule} changed nothing"


@pytest.mark.parametrize("name", CACHED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_cache_policies_in_half_precision(name, dtype):
    """A cached run in half precision stays within the precision's tolerance of the float32 cached run."""
    from skiptune.skip import feature_cache

    case = get_case(name)
    tol = tolerance(case.net, dtype)
    for policy in cache_policies(case):
        with torch.no_grad(), feature_cache(case.net, policy), skip_tuning(case.net, "const:0.8"):
            want = sample("heun", case.denoiser, case.x, GRID, extra_args=case.extra)
        for label, net, den in precision_paths(case, dtype):
            with torch.no_grad(), feature_cache(net, policy), skip_tuning(net, "const:0.8"):
                got = sample("heun", den, case.x, GRID, extra_args=case.extra)
            err = ((got - want).norm() / want.norm()).item()
            assert got.dtype == torch.float64 and err <= tol, f"{name}, {label}, {policy}: {err:.3g} > {tol:.3g}"
