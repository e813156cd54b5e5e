"""Feature-cache policies (encoder propagation, DeepCache): what partial passes compute, and that nothing leaks.

The oracle of a partial pass is the plain network with join hooks: DeepCache at branch b equals a full pass
whose join of site n-1-b gets the main input kept at the key pass; encoder propagation equals a full pass
whose every join gets the kept skip, and whose innermost join also gets the kept main input. The hooks
replace inputs after the deeper layers ran, so the oracle computes everything and shares no code path with
the staged forward.
"""

import contextlib

import pytest
import torch

from conftest import randomize
from skiptune.adapters import find_adapter
from skiptune.adapters.base import Adapter
from skiptune.core.errors import InputError, StateError
from skiptune.experiment.generate import SamplingSpec, generate
from skiptune.nets import build_preset
from skiptune.sampling import EDMDenoiser, sample
from skiptune.skip import CachePolicy, canonical_cache, feature_cache, freeu, skip_sites, skip_tuning

pytestmark = pytest.mark.usefixtures("one_thread")

NETS = ["ddpmpp-cifar10-cond-tiny", "ncsnpp-cifar10-tiny", "adm-imagenet64-tiny", "uvit-imagenet256-huge-tiny",
        "adm-guided-imagenet64-tiny", "cd-imagenet64-tiny", "ldm-imagenet256-tiny"]
_NETS: dict = {}


def get_net(name: str):
    if name not in _NETS:
        _NETS[name] = randomize(build_preset(name), seed=3, scale=0.15 if "uvit" in name else 0.05).eval()
    return _NETS[name]


def inputs(net, seed: int, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.img_channels, net.img_resolution, net.img_resolution, generator=g)
    labels = {"class_labels": torch.eye(net.label_dim)[torch.arange(n) % net.label_dim]} if net.label_dim else {}
    return x, labels


def kinds(name: str, k: int) -> list[str]:
    out = [f"deepcache:keys=0:branch={b}" for b in sorted({0, 1, k - 1})]
    return out if "uvit" in name else ["encoder:keys=0", *out]


def oracle(net, policy: CachePolicy, key_call, call):
    """The partial pass of ``call`` after the key pass ``key_call``, computed with join hooks on the plain net."""
    adapter = find_adapter(net)
    sites = adapter.sites(net)
    n = len(sites)
    seen: dict[int, tuple] = {}

    def recorder(i):
        def fn(u, d):
            seen[i] = (u, d)
            return u, d
        return fn

    handles = [h for s in sites for h in adapter.attach_join(net, s, recorder(s.index))]
    with torch.no_grad():
        key_call()
    for h in handles:
        h.remove()

    def replace(i):
        def fn(u, d):
            if policy.kind == "encoder":
                return (seen[i][0] if i == 0 else u), seen[i][1]
            return (seen[i][0] if i == n - 1 - policy.branch else u), d
        return fn

    handles = [h for s in sites for h in adapter.attach_join(net, s, replace(s.index))]
    try:
        with torch.no_grad():
            return call()
    finally:
        for h in handles:
            h.remove()


# --- the policy as a value ---------------------------------------------------------------------------

def test_policy_parsing_canonical_form_and_errors():
    p = CachePolicy.parse("encoder:keys=0-3,5,10,15")
    assert p.keys == (0, 1, 2, 3, 5, 10, 15) and str(p) == "encoder:keys=0-3,5,10,15"
    assert str(CachePolicy.parse("deepcache:3:branch=1")) == "deepcache:3:branch=1"
    assert str(CachePolicy.parse("deepcache:interval=2:branch=0")) == "deepcache:2"
    assert CachePolicy.parse("none") is None and canonical_cache("encoder:1") is None  # every pass full
    assert canonical_cache("deepcache:2") == "deepcache:2"
    assert [CachePolicy.parse("deepcache:3").is_key(i) for i in range(7)] == [1, 0, 0, 1, 0, 0, 1]
    assert CachePolicy.parse("encoder:keys=0,2").full_evaluations(5) == 2
    assert CachePolicy.parse("deepcache:3").full_evaluations(19) == 7
    for bad, match in [("faster:2", "unknown cache policy"), ("encoder:0", ">= 1"), ("encoder:keys=1,2", "include"),
                       ("encoder:2:branch=1", "deepcache option"), ("deepcache", "exactly one"),
                       ("deepcache:2:depth=1", "unknown cache option"), ("deepcache:x", "is not an integer"),
                       ("encoder:keys=3-1", "empty")]:
        with pytest.raises(InputError, match=match):
            CachePolicy.parse(bad)


# --- partial passes against the hook oracle ----------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_partial_passes_equal_the_hook_oracle(name):
    net = get_net(name)
    k = len(skip_sites(net))
    x1, lab = inputs(net, 1)
    x2, _ = inputs(net, 2)
    s1, s2 = torch.tensor([5.0, 5.0]), torch.tensor([1.5, 1.5])
    with torch.no_grad():
        plain2 = net(x2, s2, **lab)
    for text in kinds(name, k):
        policy = CachePolicy.parse(text)
        with torch.no_grad(), feature_cache(net, policy) as fc:
            full1 = net(x1, s1, **lab)
            part2 = net(x2, s2, **lab)
            again = net(x2, s2, **lab)  # a second partial pass reads the same kept features
        assert fc.stats.full == 1 and fc.stats.partial == 2, text
        want = oracle(net, policy, lambda: net(x1, s1, **lab), lambda: net(x2, s2, **lab))
        torch.testing.assert_close(part2, want, rtol=0, atol=1e-5, msg=text)
        assert torch.equal(part2, again)
        with torch.no_grad():
            assert torch.equal(full1, net(x1, s1, **lab)), text  # the key pass is the plain pass
        assert (part2 - plain2).abs().max() > 1e-4, f"{text}: the partial pass changed nothing"


@pytest.mark.parametrize("name", NETS)
def test_partial_pass_at_the_key_input_is_the_full_pass(name):
    """At the key evaluation's own input the kept features are what a full pass computes: same output."""
    net = get_net(name)
    x, lab = inputs(net, 4)
    s = torch.tensor([2.0, 2.0])
    with torch.no_grad():
        plain = net(x, s, **lab)
        for text in kinds(name, len(skip_sites(net))):
            with feature_cache(net, text, streams=1) as fc:
                net(x, s, **lab)
                fc._runner.first_sigma = None  # the same sigma again would otherwise start a new trajectory
                out = net(x, s, **lab)
            assert fc.stats.partial == 1, text
            torch.testing.assert_close(out, plain, rtol=0, atol=1e-5, msg=text)


def test_every_pass_full_is_bit_identical_and_detaching_restores_the_network():
    net = get_net("ddpmpp-cifar10-cond-tiny")
    spec = SamplingSpec("heun", nfe=7)
    plain = generate(net, "0-3", spec, batch_size=2)
    for text in ("encoder:1", "deepcache:1:branch=1", "encoder:keys=0-6"):
        g = generate(net, "0-3", spec, batch_size=2, cache=text)
        assert torch.equal(g.images, plain.images), text
    with feature_cache(net, "deepcache:2"):
        assert net.model.feature_cache is not None
    assert net.model.feature_cache is None and "feature_cache" not in vars(net.model)
    assert torch.equal(generate(net, "0-3", spec, batch_size=2).images, plain.images)


# --- no leakage across batches, seeds and trajectories ------------------------------------------------

@pytest.mark.parametrize("name", ["ddpmpp-cifar10-cond-tiny", "uvit-imagenet256-huge-tiny"])
def test_each_sample_depends_only_on_its_seed(name):
    net = get_net(name)
    spec = SamplingSpec("heun", nfe=9)
    policy = "deepcache:2" if "uvit" in name else "encoder:3"
    whole = generate(net, "0-5", spec, batch_size=6, cache=policy)
    parts = generate(net, "0-5", spec, batch_size=4, cache=policy)
    alone = generate(net, [4], spec, batch_size=1, cache=policy)
    plain = generate(net, "0-5", spec, batch_size=6)
    # equal up to the float32 batch effects of the convolutions (the uncached network has the same)
    torch.testing.assert_close(parts.images, whole.images, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(alone.images[0], whole.images[4], rtol=1e-3, atol=1e-3)
    assert (whole.images - plain.images).abs().max() > 1e-2  # the cache did act
    full = CachePolicy.parse(policy).full_evaluations(9)
    assert whole.cache["full_per_sample"] == full and whole.cache["partial_per_sample"] == 9 - full
    assert parts.cache["trajectories"] == 2 and parts.cache["full_calls"] == 2 * full  # reset per batch


def test_a_new_trajectory_is_noticed_without_a_reset():
    """Calling the sampler twice with the same handle: the second run does not read the first run's features."""
    net = get_net("adm-imagenet64-tiny")
    x, lab = inputs(net, 5)
    x = x.double() * 80
    sigmas = torch.tensor([80.0, 10.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    den = EDMDenoiser(net)
    with torch.no_grad(), feature_cache(net, "deepcache:3") as fc:
        first = sample("heun", den, x, sigmas, extra_args=lab)
        second = sample("heun", den, x * 0.5, sigmas, extra_args=lab)
    with torch.no_grad(), feature_cache(net, "deepcache:3"):
        fresh = sample("heun", den, x * 0.5, sigmas, extra_args=lab)
    assert fc.stats.trajectories == 2
    assert torch.equal(second, fresh) and not torch.equal(first, second)


def test_guidance_keeps_the_conditional_and_unconditional_passes_apart():
    net = get_net("uvit-imagenet256-huge-tiny")
    x, _ = inputs(net, 6)
    cond = {"class_labels": torch.eye(net.label_dim)[[1, 2]]}
    s1, s2 = torch.tensor([5.0, 5.0]), torch.tensor([1.0, 1.0])
    with torch.no_grad():
        with feature_cache(net, "deepcache:keys=0", streams=2):
            net(x, s1, **cond)
            net(x, s1, class_labels=None)
            c2 = net(x, s2, **cond)
            u2 = net(x, s2, class_labels=None)
        with feature_cache(net, "deepcache:keys=0"):  # one stream: each call is its own evaluation
            net(x, s1, **cond)
            c_only = net(x, s2, **cond)
        with feature_cache(net, "deepcache:keys=0"):
            net(x, s1, class_labels=None)
            u_only = net(x, s2, class_labels=None)
    assert torch.equal(c2, c_only) and torch.equal(u2, u_only)
    g_plain = generate(net, "0-1", SamplingSpec("heun", nfe=5, guidance=1.5))
    g_every = generate(net, "0-1", SamplingSpec("heun", nfe=5, guidance=1.5), cache="deepcache:1")
    assert torch.equal(g_plain.images, g_every.images)
    g = generate(net, "0-1", SamplingSpec("heun", nfe=5, guidance=1.5), cache="deepcache:2")
    assert g.cache["full_calls"] == 2 * 3 and g.cache["partial_calls"] == 2 * 2


# --- composition with Skip-Tuning and FreeU ----------------------------------------------------------

@pytest.mark.parametrize("policy", ["encoder:keys=0", "deepcache:keys=0:branch=1"])
def test_rules_and_freeu_act_on_the_joins_that_run(policy):
    net = get_net("ddpmpp-cifar10-cond-tiny")
    x1, lab = inputs(net, 7)
    x2, _ = inputs(net, 8)
    s1, s2 = torch.tensor([5.0, 5.0]), torch.tensor([1.5, 1.5])
    pol = CachePolicy.parse(policy)
    for rule, fu in (("const:0.6", None), ("layer:0.5", "b1=1.2,b2=1.4,s1=0.9,s2=0.2")):
        with torch.no_grad(), skip_tuning(net, rule), freeu(net, fu) if fu else contextlib.nullcontext():
            want = oracle(net, pol, lambda: net(x1, s1, **lab), lambda: net(x2, s2, **lab))
            with feature_cache(net, pol):
                net(x1, s1, **lab)
                got = net(x2, s2, **lab)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"{policy} + {rule}")
        with torch.no_grad(), feature_cache(net, pol):
            net(x1, s1, **lab)
            untuned_cache = net(x2, s2, **lab)
        assert (got - untuned_cache).abs().max() > 1e-3, f"{rule} did nothing under {policy}"


# --- errors ----------------------------------------------------------------------------------------

def test_clear_errors():
    uvit = get_net("uvit-imagenet256-huge-tiny")
    with pytest.raises(InputError, match="time step only as an input token"):
        feature_cache(uvit, "encoder:2")
    net = get_net("adm-imagenet64-tiny")
    k = len(skip_sites(net))
    with pytest.raises(InputError, match=f"has {k} skips"):
        feature_cache(net, f"deepcache:2:branch={k}")
    with feature_cache(net, "deepcache:2"), pytest.raises(StateError, match="already has an active feature cache"):
        feature_cache(net, "encoder:2")
    assert net.model.feature_cache is None
    with pytest.raises(InputError, match="cannot run feature-cache policies"):
        Adapter().staged(net, "encoder")  # what every adapter without stages says


# --- the command line ------------------------------------------------------------------------------

def randomized_checkpoint(folder) -> str:
    """ddpmpp-tiny with every weight perturbed (its zero-initialised output layer would hide any change)."""
    from skiptune import save_checkpoint

    return str(save_checkpoint(randomize(build_preset("ddpmpp-tiny"), seed=5), folder / "tiny.safetensors"))


def test_sample_cli_reports_the_cost_and_records_the_policy(tmp_path, capsys):
    import json

    import numpy as np

    from skiptune.cli import main

    model = randomized_checkpoint(tmp_path)
    common = ["sample", "--model", model, "--sampler", "heun", "--nfe", "9", "--seeds", "0-3", "--rule",
              "layer:0.7", "--no-progress", "--no-pngs"]
    assert main([*common, "--cache", "deepcache:3:branch=1", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "cache deepcache:3:branch=1: 3 full + 6 partial evaluations per sample" in out
    assert "full-network equivalents per sample" in out
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert cfg["cache"]["policy"] == "deepcache:3:branch=1" and cfg["cache"]["full_calls"] == 3
    assert 0 < cfg["cache"]["partial_cost"] < 1.5
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    a, b = (np.load(tmp_path / d / "images.npz")["images"] for d in "ab")
    assert a.shape == b.shape and (a != b).any()
    capsys.readouterr()
    assert main([*common, "--cache", "deep:3", "--out", str(tmp_path / "c")]) == 2
    assert "unknown cache policy 'deep'" in capsys.readouterr().err
    assert main(["sample", "--arch", "uvit-imagenet256-huge-tiny", "--nfe", "3", "--seeds", "0", "--cache",
                 "encoder:2", "--out", str(tmp_path / "d")]) == 2
    assert "use the deep-feature cache" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_sweep_cli_stores_the_policy_in_the_point(tmp_path):
    from skiptune.cli import main
    from skiptune.experiment import open_store

    db = tmp_path / "r.sqlite"
    args = ["sweep", "--model", randomized_checkpoint(tmp_path), "--rules", "none;const:0.8", "--samplers", "euler",
            "--nfe", "3", "--seeds", "0-69", "--seed-sets", "1", "--ref", "digits", "--db", str(db), "--batch", "70",
            "--no-progress"]
    assert main([*args, "--cache", "deepcache:2"]) == 0
    assert main(args) == 0
    with open_store(db) as store:
        runs = store.runs()
    caches = sorted((r.config.get("cache") or "none", r.config["rule"]) for r in runs)
    assert caches == [("deepcache:2", "const:0.8"), ("deepcache:2", "none"), ("none", "const:0.8"), ("none", "none")]
    fids = {(r.config.get("cache"), r.config["rule"]): r.metrics["fid"].value for r in runs}
    assert fids[("deepcache:2", "none")] != fids[(None, "none")]
    details = [r.metrics["fid"].details for r in runs if r.config.get("cache")]
    assert all(d["cache"]["full_per_sample"] == 2 and d["cache"]["partial_per_sample"] == 1 for d in details)


# --- diffusers UNet2DModel ---------------------------------------------------------------------------

def diffusers_denoiser(**kw):
    pytest.importorskip("diffusers")
    from diffusers_models import tiny_unet2d
    from skiptune.io.diffusers import DiffusersDenoiser
    from skiptune.sampling import alphas_cumprod

    return DiffusersDenoiser(tiny_unet2d(**kw), alphas_cumprod(1000, "linear"))


def check_diffusers_stages(den, x1, x2, cond: dict, policies: list[str]) -> None:
    """Every pass full: the staged forward equals diffusers' own; each policy: the join-hook oracle."""
    s1, s2 = torch.tensor([5.0, 5.0], dtype=torch.float64), torch.tensor([1.5, 1.5], dtype=torch.float64)
    with torch.no_grad():
        plain = den(x2, s2, **cond)
        with feature_cache(den, "encoder:1"):
            staged = den(x2, s2, **cond)
    torch.testing.assert_close(staged, plain, rtol=0, atol=1e-6)
    for text in policies:
        policy = CachePolicy.parse(text)
        with torch.no_grad(), feature_cache(den, policy):
            den(x1, s1, **cond)
            got = den(x2, s2, **cond)
        want = oracle(den, policy, lambda: den(x1, s1, **cond), lambda: den(x2, s2, **cond))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=text)
        assert (got - plain).abs().max() > 1e-4, text


@pytest.mark.parametrize("kw", [{}, {"layers": 2, "num_class_embeds": 5}], ids=["uncond", "class-2-layers"])
def test_diffusers_stages_match_diffusers_and_the_hook_oracle(kw):
    den = diffusers_denoiser(**kw)
    n = len(skip_sites(den))
    lab = {"class_labels": torch.tensor([1, 3])} if kw else {}
    g = torch.Generator().manual_seed(9)
    x1, x2 = (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    layers = kw.get("layers", 1)
    # up blocks pop layers + 1 skips each: branches at their first resnets are layers, 2 layers + 1, ...
    branches = [b for b in range(n) if (b - layers) % (layers + 1) == 0]
    assert branches
    check_diffusers_stages(den, x1, x2, lab, ["encoder:keys=0", *(f"deepcache:keys=0:branch={b}" for b in branches)])
    with pytest.raises(InputError, match="branches available here: " + ", ".join(map(str, branches))):
        feature_cache(den, f"deepcache:2:branch={branches[0] - 1 if branches[0] else branches[0] + 1}")


def test_diffusers_conditional_unet_stages():
    pytest.importorskip("diffusers")
    from diffusers_models import tiny_unet2d_cond
    from skiptune.io.diffusers import DiffusersDenoiser
    from skiptune.sampling import alphas_cumprod

    den = DiffusersDenoiser(tiny_unet2d_cond(levels=3), alphas_cumprod(1000, "linear"))
    g = torch.Generator().manual_seed(10)
    x1, x2 = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    ctx = {"encoder_hidden_states": torch.randn(2, 3, 8, generator=g)}
    check_diffusers_stages(den, x1, x2, ctx, ["encoder:keys=0", "deepcache:keys=0:branch=1"])


def test_a_compiled_network_runs_a_cache_policy_exactly():
    """torch.compile (eager backend: the graph capture without code generation) gives the eager cached result."""
    import torch._dynamo

    net = get_net("adm-imagenet64-tiny")
    x, lab = inputs(net, 11)
    x = x.double() * 80
    sigmas = torch.tensor([80.0, 10.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    with torch.no_grad(), feature_cache(net, "deepcache:2"):
        want = sample("heun", EDMDenoiser(net), x, sigmas, extra_args=lab)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager")
    try:
        with torch.no_grad(), feature_cache(net, "deepcache:2") as fc:
            got = sample("heun", EDMDenoiser(compiled), x, sigmas, extra_args=lab)
    finally:
        torch._dynamo.reset()
    assert fc.stats.full == 4 and fc.stats.partial == 3
    assert torch.equal(got, want)
