"""FreeU: the Fourier filter against closed forms, stage keying, 0.0 factors, clean detach, Skip-Tuning
alongside, and equality with diffusers' enable_freeu where diffusers applies it."""

import math

import pytest
import torch

from conftest import randomize
from skiptune.experiment.generate import SamplingSpec, generate
from skiptune.nets import build_preset
from skiptune.skip import FreeUConfig, fourier_lowpass, freeu, skip_sites, skip_tuning

pytestmark = pytest.mark.usefixtures("one_thread")


def wave(k_y: int, k_x: int, h: int = 8, w: int = 8) -> torch.Tensor:
    """cos(2 pi (k_y y / h + k_x x / w)) on an h x w grid, shape [1, 1, h, w], float64."""
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    return torch.cos(2 * math.pi * (k_y * y / h + k_x * x / w))[None, None]


def test_lowpass_closed_forms():
    # The box holds the frequencies -1 and 0 on each axis. A constant (k = 0) is scaled by s; cos at k = 2
    # is outside and kept; cos at k = 1 is e^{+i} / 2 (outside) + e^{-i} / 2 (inside): s = 0 leaves half of it.
    const = torch.full((1, 1, 8, 8), 3.0, dtype=torch.float64)
    for s in (0.0, 0.5, 1.7):
        torch.testing.assert_close(fourier_lowpass(const, s), s * const, rtol=0, atol=1e-12)
    torch.testing.assert_close(fourier_lowpass(wave(2, 0), 0.0), wave(2, 0), rtol=0, atol=1e-12)
    torch.testing.assert_close(fourier_lowpass(wave(0, 3), 0.0), wave(0, 3), rtol=0, atol=1e-12)
    torch.testing.assert_close(fourier_lowpass(wave(1, 0), 0.0), 0.5 * wave(1, 0), rtol=0, atol=1e-12)
    torch.testing.assert_close(fourier_lowpass(wave(1, 1), 0.2), (1 + 0.2) / 2 * wave(1, 1), rtol=0, atol=1e-12)
    # threshold 2 takes in k = +1 as well, and the filter is linear
    torch.testing.assert_close(fourier_lowpass(wave(1, 0), 0.0, threshold=2), 0 * wave(1, 0), rtol=0, atol=1e-12)
    mix = 2 * const + wave(2, 1) - wave(0, 1)
    torch.testing.assert_close(fourier_lowpass(mix, 0.3), 0.6 * const + wave(2, 1) - 0.65 * wave(0, 1),
                               rtol=0, atol=1e-12)
    # dtypes: float64 stays float64; float16 is filtered in float32 and returned as float16
    assert fourier_lowpass(const, 0.5).dtype == torch.float64
    half = fourier_lowpass(const.half(), 0.5)
    assert half.dtype == torch.float16 and torch.equal(half, torch.full_like(half, 1.5))


def test_lowpass_equals_the_fftshift_definition():
    """The box [H//2 - 1, H//2 + 1) x [W//2 - 1, W//2 + 1) of the fftshifted spectrum, odd sizes included."""
    g = torch.Generator().manual_seed(0)
    for h, w in ((8, 8), (5, 3), (1, 4), (2, 6)):
        x = torch.randn(2, 3, h, w, generator=g)
        for s in (0.0, 0.4, 1.3):
            freq = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
            mask = torch.ones(h, w)
            mask[max(h // 2 - 1, 0): h // 2 + 1, max(w // 2 - 1, 0): w // 2 + 1] = s
            want = torch.fft.ifftn(torch.fft.ifftshift(freq * mask, dim=(-2, -1)), dim=(-2, -1)).real
            torch.testing.assert_close(fourier_lowpass(x, s), want, rtol=0, atol=1e-6)


def test_config_parsing_and_validation():
    a = FreeUConfig.parse("1.2,1.4,0.9,0.2")
    assert a == FreeUConfig.parse("b1=1.2, b2=1.4, s1=0.9, s2=0.2") == FreeUConfig(1.2, 1.4, 0.9, 0.2)
    assert FreeUConfig.parse(str(a)) == a and str(a) == "b1=1.2,b2=1.4,s1=0.9,s2=0.2"
    zero = FreeUConfig.parse("0,0,0,0")  # 0.0 is a value, not "off"
    assert zero.factors(0) == (0.0, 0.0) and zero.factors(1) == (0.0, 0.0) and zero.factors(2) is None
    assert FreeUConfig.parse("b1=1,b2=1,s1=1,s2=1,threshold=2").threshold == 2
    for bad in ("1,2,3", "b1=1,b2=1,s1=1", "b1=1,b2=1,s1=1,s2=-0.1", "1,1,1,nan", "b1=1,b2=1,s1=1,s2=1,x=2",
                "b1=1,b2=1,s1=1,s2=1,threshold=0"):
        with pytest.raises(ValueError):
            FreeUConfig.parse(bad)


@pytest.fixture(scope="module")
def net():
    return randomize(build_preset("ddpmpp-tiny"), seed=3)


def edm_inputs(net):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, net.img_channels, 16, 16, generator=g), torch.tensor([0.3, 5.0])


def no_hooks(module) -> bool:
    return not any(m._forward_pre_hooks or m._forward_hooks for m in module.modules())


def test_freeu_transform_at_each_join(net):
    """At every stage-0/1 join FreeU maps what arrives, (u, d), to (u with its first half times b, lowpass_s(d)):
    checked by capturing the join's input before and after FreeU's own hook in the same call."""
    x, s = edm_inputs(net)
    sites = skip_sites(net)
    lowest_first = sorted({site.resolution for site in sites})
    stage = {site.name.removeprefix("dec."): lowest_first.index(site.resolution) for site in sites}
    before, after = {}, {}
    joins = net.model.joins
    pre = [j.register_forward_pre_hook(lambda m, a, n=n: before.update({n: tuple(t.clone() for t in a)}))
           for n, j in joins.items()]
    try:
        with freeu(net, "b1=1.3,b2=0.0,s1=0.0,s2=0.5") as handle, torch.no_grad():
            post = [j.register_forward_pre_hook(lambda m, a, n=n: after.update({n: tuple(t.clone() for t in a)}))
                    for n, j in joins.items()]
            net(x, s)
            for h in post:
                h.remove()
    finally:
        for h in pre:
            h.remove()
    factors = {0: (1.3, 0.0), 1: (0.0, 0.5)}
    assert set(stage.values()) >= {0, 1, 2}
    assert handle.sites == [(n, st) for n, st in ((site.name, stage[site.name[4:]]) for site in sites) if st < 2]
    for name, (u, d) in before.items():
        if stage[name] > 1:
            assert torch.equal(after[name][0], u) and torch.equal(after[name][1], d)
            continue
        b, sk = factors[stage[name]]
        half = u.shape[1] // 2
        assert torch.equal(after[name][0][:, :half], u[:, :half] * b)
        assert torch.equal(after[name][0][:, half:], u[:, half:])
        torch.testing.assert_close(after[name][1], fourier_lowpass(d, sk), rtol=0, atol=1e-6)
    assert no_hooks(net)


def test_identity_detach_exceptions_and_double_attach(net):
    x, s = edm_inputs(net)
    with torch.no_grad():
        base = net(x, s)
        with freeu(net, "1,1,1,1") as handle:  # factors of exactly 1 attach nothing
            assert torch.equal(net(x, s), base) and no_hooks(net)
        assert not handle.active
        handle = freeu(net, "1.2,1.4,0.9,0.2")
        assert (net(x, s) - base).abs().max() > 1e-3
        with pytest.raises(RuntimeError, match="already has FreeU"):
            freeu(net, "1,1,1,1")
        handle.remove()
        handle.remove()
        assert torch.equal(net(x, s), base) and no_hooks(net)
        with pytest.raises(KeyError):
            with freeu(net, "1.2,1.4,0.9,0.2"):
                raise KeyError("boom")
        assert torch.equal(net(x, s), base) and no_hooks(net)


def test_combines_with_skip_tuning_in_either_order(net):
    x, s = edm_inputs(net)
    with torch.no_grad():
        base = net(x, s)
        with skip_tuning(net, "layer:0.6"):
            st = net(x, s)
            with freeu(net, "1.2,1.4,0.9,0.2"):
                both = net(x, s)
        with freeu(net, "1.2,1.4,0.9,0.2"):
            fu = net(x, s)
            with skip_tuning(net, "layer:0.6"):
                both_other_order = net(x, s)
        assert torch.equal(net(x, s), base) and no_hooks(net)
    # rho scales d, FreeU filters d linearly: the two commute up to float32 rounding
    torch.testing.assert_close(both, both_other_order, rtol=1e-5, atol=1e-5)
    for single in (st, fu, base):
        assert (both - single).abs().max() > 1e-3


def test_generate_with_freeu(net):
    spec = SamplingSpec("euler", steps=3)
    plain = generate(net, "0-1", spec).images
    assert torch.equal(generate(net, "0-1", spec, freeu="1,1,1,1").images, plain)
    tuned = generate(net, "0-1", spec, rule="layer:0.7", freeu="b1=1.2,b2=1.4,s1=0.9,s2=0.2").images
    assert (tuned - plain).abs().max() > 1e-3
    assert no_hooks(net)


# --- diffusers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cond_unet():
    pytest.importorskip("diffusers")
    from diffusers_models import tiny_unet2d_cond

    return tiny_unet2d_cond(levels=3)


@pytest.mark.parametrize("factors", [(1.2, 1.4, 0.9, 0.2), (1.5, 0.7, 0.3, 1.8), (0.6, 1.1, 2.0, 0.05)])
def test_equals_diffusers_enable_freeu(cond_unet, factors):
    """diffusers applies FreeU in UpBlock2D/CrossAttnUpBlock2D of UNet2DConditionModel, up blocks 0 and 1.

    Both compute the same float32 operations in the same order (scale half the backbone; FFT, multiply the
    box, inverse FFT), so the outputs agree to float32 FFT round-off: relative 1e-5 of the output scale
    is a bound of a few ulp times log2(H W) = 6 per transform through a network of gain O(1)."""
    from diffusers_models import run, unet_inputs

    b1, b2, s1, s2 = factors
    x, t, c = unet_inputs(cond_unet)
    with torch.no_grad():
        base = run(cond_unet, x, t, c)
        cond_unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)
        try:
            theirs = run(cond_unet, x, t, c)
        finally:
            cond_unet.disable_freeu()
        with freeu(cond_unet, b1=b1, b2=b2, s1=s1, s2=s2):
            ours = run(cond_unet, x, t, c)
        assert torch.equal(run(cond_unet, x, t, c), base) and no_hooks(cond_unet)
    scale = theirs.abs().max()
    assert (theirs - base).abs().max() > 1e-3 * scale
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * float(scale))


def test_zero_factors_and_unet2d(cond_unet):
    """0.0 is a value here; diffusers takes any zero factor as "FreeU off". FreeU also acts on UNet2DModel,
    which diffusers leaves untouched (its up blocks carry no FreeU stage index)."""
    from diffusers_models import run, tiny_unet2d, unet_inputs

    x, t, c = unet_inputs(cond_unet)
    with torch.no_grad():
        base = run(cond_unet, x, t, c)
        cond_unet.enable_freeu(s1=0.0, s2=0.2, b1=1.2, b2=1.4)
        try:
            assert torch.equal(run(cond_unet, x, t, c), base)  # diffusers: off
        finally:
            cond_unet.disable_freeu()
        with freeu(cond_unet, b1=1.2, b2=1.4, s1=0.0, s2=0.2):
            assert (run(cond_unet, x, t, c) - base).abs().max() > 1e-3
        plain_net = tiny_unet2d()
        x, t, c = unet_inputs(plain_net)
        base = run(plain_net, x, t, c)
        with freeu(plain_net, "1.2,1.4,0.9,0.2") as handle:
            assert (run(plain_net, x, t, c) - base).abs().max() > 1e-3
        assert [st for _, st in handle.sites] == [0, 0, 1, 1]
        assert torch.equal(run(plain_net, x, t, c), base)


def test_differs_from_diffusers_without_a_mid_block_by_its_in_place_scaling():
    """Without a mid block, the tensor entering up block 0 is the last skip itself (the same object), and diffusers'
    apply_freeu scales its first half by b1 in place before filtering that skip: its skip is filtered after the
    backbone factor. With that aliasing broken (the block's input cloned) diffusers equals FreeU here."""
    pytest.importorskip("diffusers")
    from diffusers_models import run, tiny_unet2d_cond, unet_inputs

    unet = tiny_unet2d_cond(levels=3, mid=False)
    x, t, c = unet_inputs(unet)
    aliased = []

    def note_alias(module, args, kwargs):
        aliased.append(kwargs["hidden_states"] is kwargs["res_hidden_states_tuple"][-1])

    def clone_input(module, args, kwargs):
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].clone()}

    with torch.no_grad():
        base = run(unet, x, t, c)
        unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        try:
            hook = unet.up_blocks[0].register_forward_pre_hook(note_alias, with_kwargs=True)
            theirs = run(unet, x, t, c)
            hook.remove()
            hook = unet.up_blocks[0].register_forward_pre_hook(clone_input, with_kwargs=True)
            theirs_unaliased = run(unet, x, t, c)
            hook.remove()
        finally:
            unet.disable_freeu()
        with freeu(unet, "b1=1.2,b2=1.4,s1=0.9,s2=0.2"):
            ours = run(unet, x, t, c)
        assert torch.equal(run(unet, x, t, c), base) and no_hooks(unet)
    assert aliased == [True]
    scale = float(theirs.abs().max())
    assert (ours - theirs).abs().max() > 1e-3 * scale  # far beyond the FFT round-off bound of 1e-5 * scale
    torch.testing.assert_close(ours, theirs_unaliased, rtol=0, atol=1e-5 * scale)
