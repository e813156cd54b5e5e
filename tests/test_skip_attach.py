"""Attaching rules: exactness, a hand-written reference forward, sigma publication, clean detach."""

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize
from skiptune.nets import build_preset
from skiptune.skip import Rule, Sites, publish_sigma, skip_sites, skip_tuning

NETS = ["adm-tiny", "ddpmpp-tiny", "ncsnpp-tiny", "ddpmpp-afhqv2-64-tiny"]


def inputs(net, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.img_channels, net.img_resolution, net.img_resolution, generator=g)
    sigma = torch.tensor([0.05, 1.0, 20.0][:n])
    labels = torch.eye(net.label_dim)[:n] if net.label_dim else None
    return x, sigma, labels


@pytest.fixture(scope="module", params=NETS)
def net(request):
    return randomize(build_preset(request.param), seed=1)


def test_all_ones_rule_is_bit_identical(net):
    x, s, c = inputs(net)
    base = net(x, s, c)
    k = len(skip_sites(net))
    for rule in ("none", "layer:1", "const:1", Sites((1.0,) * k), "ramp:down:1", "window:0:100:const:1"):
        for mode in ("concat", "residual", "norm"):
            with skip_tuning(net, rule, mode=mode):
                assert torch.equal(net(x, s, c), base), (rule, mode)


def test_detach_restores_exact_output(net):
    x, s, c = inputs(net)
    base = net(x, s, c)
    handle = skip_tuning(net, "layer:0.6")
    tuned = net(x, s, c)
    assert not torch.allclose(tuned, base)
    handle.remove()
    handle.remove()  # idempotent
    assert torch.equal(net(x, s, c), base)
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_hooks_removed_after_exception(net):
    x, s, c = inputs(net)
    base = net(x, s, c)
    with pytest.raises(KeyError):
        with skip_tuning(net, "layer:0.5"):
            raise KeyError("boom")
    assert not any(m._forward_pre_hooks for m in net.modules())
    assert torch.equal(net(x, s, c), base)
    with skip_tuning(net, "layer:0.5"):  # can attach again afterwards
        pass


def test_double_attach_refused(net):
    with skip_tuning(net, "layer:0.5"):
        with pytest.raises(RuntimeError, match="already has an active skip tuning"):
            skip_tuning(net, "const:0.9")
    assert not any(m._forward_pre_hooks for m in net.modules())


def reference_forward(net, x, sigma, labels, site_index, rho):
    """EDM forward pass written out by hand, with skip number ``site_index`` multiplied by rho."""
    unet = net.model
    sd = net.sigma_data
    sig = sigma.reshape(-1, 1, 1, 1)
    c_skip, c_out = sd**2 / (sig**2 + sd**2), sig * sd / (sig**2 + sd**2).sqrt()
    c_in, c_noise = 1 / (sd**2 + sig**2).sqrt(), sigma.log() / 4
    h = c_in * x
    emb = unet.map_noise(c_noise)
    song = type(unet).__name__ == "SongUNet"
    if song:
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)
        if unet.map_label is not None:
            emb = emb + unet.map_label(labels * unet.map_label.in_features ** 0.5)
        emb = F.silu(unet.map_layer1(F.silu(unet.map_layer0(emb))))
    else:
        emb = unet.map_layer1(F.silu(unet.map_layer0(emb)))
        if unet.map_label is not None:
            emb = emb + unet.map_label(labels)
        emb = F.silu(emb)
    skips, aux = [], h
    for name, block in unet.enc.items():
        if "aux_residual" in name:
            h = skips[-1] = aux = (h + block(aux)) / 2**0.5
        else:
            h = block(h, emb) if hasattr(block, "emb_channels") else block(h)
            skips.append(h)
    popped = 0
    out = None
    for name, block in unet.dec.items():
        if name.endswith("aux_norm"):
            tmp = block(h)
        elif name.endswith("aux_conv"):
            out = block(F.silu(tmp))
        else:
            if h.shape[1] != block.in_channels:
                d = skips.pop()
                if popped == site_index:
                    d = d * rho
                h = torch.cat([h, d], dim=1)
                popped += 1
            h = block(h, emb)
    if not song:
        out = unet.out_conv(F.silu(unet.out_norm(h)))
    return c_skip * x + c_out * out


@pytest.mark.parametrize("site_frac", [0.0, 0.5, 1.0])
def test_one_site_matches_hand_written_forward(net, site_frac):
    if net.model.enc and any("aux_down" in n for n in net.model.enc):
        pytest.skip("skip-type encoder not in presets")
    x, s, c = inputs(net)
    k = len(skip_sites(net))
    i = round(site_frac * (k - 1))
    rho = 0.37
    values = [1.0] * k
    values[i] = rho
    with torch.no_grad():
        with skip_tuning(net, Sites(tuple(values))):
            got = net(x, s, c)
        want = reference_forward(net, x, s, c, i, rho)
        base = net(x, s, c)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - base).abs().max() > 1e-3, "scaling one skip must change the output"


class Recorder(Rule):
    """A rule that records the sigma it is evaluated at and returns 1."""

    sigma_dependent = True

    def __init__(self):
        self.seen = []

    def factor(self, i, k, sigma):
        self.seen.append((i, sigma))
        return 1.0

    def __str__(self):
        return "recorder"


def test_sigma_dependent_rules_see_the_published_sigma(net):
    x, s, c = inputs(net)
    rec = Recorder()
    k = len(skip_sites(net))
    with skip_tuning(net, rec):
        net(x[:1], s[1:2], None if c is None else c[:1])
        assert [i for i, _ in rec.seen] == list(range(k))
        assert all(sig == pytest.approx(1.0) for _, sig in rec.seen)
        rec.seen.clear()
        net(x, s, c)  # mixed sigmas: the rule gets one value per sample
        sig = rec.seen[0][1]
        assert torch.is_tensor(sig) and sig.tolist() == pytest.approx(s.tolist())
        rec.seen.clear()
        with publish_sigma(torch.tensor(7.0)):  # the bare UNet sees a caller-published sigma
            net.model(x[:1], torch.zeros(1), None if c is None else c[:1])
        assert all(sig == pytest.approx(7.0) for _, sig in rec.seen)
    with skip_tuning(net, "ramp:down:0.5"):
        with pytest.raises(RuntimeError, match="no sigma was published"):
            net.model(x[:1], torch.zeros(1), None if c is None else c[:1])


def test_window_rule_acts_only_inside_its_window(net):
    x, s, c = inputs(net)
    base = net(x, s, c)
    with skip_tuning(net, "window:0.5:5:layer:0.5"):
        out = net(x, s, c)
    # sample 1 has sigma = 1 (inside); samples 0 and 2 (0.05, 20) are outside and untouched
    assert torch.equal(out[0], base[0]) and torch.equal(out[2], base[2])
    assert not torch.allclose(out[1], base[1])
    # per-sample rho equals running each sample alone
    with skip_tuning(net, "ramp:down:0.5"):
        batch = net(x, s, c)
        singles = torch.cat([net(x[j:j + 1], s[j:j + 1], None if c is None else c[j:j + 1]) for j in range(3)])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-5)


def test_modes_follow_groupnorm_invariance(net):
    """Tiny presets have no GroupNorm group straddling the u/d boundary, so norm0 removes any uniform
    scale of the skip channels (up to eps): 'norm' mode is then nearly inert and 'concat' acts only
    through the inner shortcut, i.e. equals 'residual' (seed 003, App. C)."""
    x, s, c = inputs(net)
    for site in skip_sites(net):
        groups = net.model.dec[site.name[4:]].norm0.num_groups
        width = (site.main_channels + site.skip_channels) // groups
        assert site.main_channels % width == 0
    base = net(x, s, c)
    outs = {}
    for mode in ("concat", "residual", "norm"):
        with skip_tuning(net, "layer:0.5", mode=mode):
            outs[mode] = net(x, s, c)
    effect = (outs["concat"] - base).abs().max()
    assert effect > 1e-3
    assert (outs["concat"] - outs["residual"]).abs().max() < 1e-2 * effect
    assert (outs["norm"] - base).abs().max() < 1e-2 * effect


def test_unknown_architecture_and_bad_mode():
    with pytest.raises(ValueError, match="no known skip sites"):
        skip_tuning(torch.nn.Conv2d(3, 3, 3), "layer:0.7")
    net = build_preset("ddpmpp-tiny")
    with pytest.raises(ValueError, match="unknown mode"):
        skip_tuning(net, "layer:0.7", mode="sideways")
    with pytest.raises(ValueError, match="15 skip sites"):
        skip_tuning(net, "sites:0.5,0.5")
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_gradients_flow_through_tuned_network():
    net = randomize(build_preset("ddpmpp-tiny"))
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    with skip_tuning(net, "layer:0.7"):
        net(x, torch.tensor([1.0, 2.0])).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --- how sigma reaches the rules without reading tensors back ---------------------------------------

def test_a_sampler_sigma_reaches_the_rules_as_the_sampler_number(net):
    """The sampler's float sigma arrives as that Python number (not the float32 copy the preconditioner
    publishes), also through classifier-free guidance on a doubled batch."""
    from skiptune.sampling import CFGDenoiser, EDMDenoiser, sample

    x, _, c = inputs(net, n=2)
    extra = {} if c is None else {"class_labels": c}
    rec = Recorder()
    k = len(skip_sites(net))
    dens = [EDMDenoiser(net)]
    if c is not None:
        dens.append(CFGDenoiser(EDMDenoiser(net), 1.5, {"class_labels": torch.zeros_like(c)}, batched=True))
    for den in dens:
        rec.seen.clear()
        with torch.no_grad(), skip_tuning(net, rec):
            sample("heun", den, x.to(torch.float64) * 80, torch.tensor([80.0, 0.1, 0.0], dtype=torch.float64),
                   extra_args=extra)
        sigmas = [sig for _, sig in rec.seen]
        assert all(type(sig) is float for sig in sigmas)
        assert sigmas == [80.0] * k + [0.1] * (2 * k)  # 0.1 exactly, not float32(0.1)


def test_unknown_or_per_sample_sigma_gives_per_sample_rho_on_the_tensor(net):
    from skiptune.core.sigma import mark_uniform, uniform_value

    x, _, c = inputs(net)
    rec = Recorder()
    marked = mark_uniform(torch.full((3,), 0.1, dtype=torch.float64), 0.1)
    assert uniform_value(marked) == 0.1 and uniform_value(marked[1:]) == 0.1  # views keep the mark
    with torch.no_grad(), skip_tuning(net, rec):
        net(x, marked, c)
        assert {sig for _, sig in rec.seen} == {0.1}
        rec.seen.clear()
        changed = marked.clone()
        marked.mul_(10)  # modified in place: the mark no longer holds
        assert uniform_value(marked) is None and uniform_value(changed) is None
        net(x, marked, c)
        assert all(torch.is_tensor(sig) and sig.shape == (3,) for _, sig in rec.seen)
    # per-sample rho equals the rule at each sample's sigma
    s = torch.tensor([0.05, 1.0, 20.0])
    with torch.no_grad():
        with skip_tuning(net, "layer:0.7*ramp:down:0.5") as tuning:
            batch = net(x, s, c)
            per_sample = [tuning.rhos(float(v)) for v in s]
        for j, rhos in enumerate(per_sample):
            with skip_tuning(net, Sites(tuple(rhos))):
                single = net(x[j:j + 1], s[j:j + 1], None if c is None else c[j:j + 1])
            torch.testing.assert_close(batch[j:j + 1], single, rtol=1e-4, atol=1e-5)


def test_set_rule_changes_rho_in_place(net):
    x, s, c = inputs(net)
    with torch.no_grad():
        with skip_tuning(net, "layer:0.8"):
            want = net(x, s, c)
        with skip_tuning(net, "const:0.5") as tuning:
            hooks = [dict(m._forward_pre_hooks) for m in net.modules()]
            tuning.set_rule("layer:0.8")
            assert str(tuning.rule) == "layer:0.8:1"
            assert [dict(m._forward_pre_hooks) for m in net.modules()] == hooks  # the same hooks
            assert torch.equal(net(x, s, c), want)
            with pytest.raises(ValueError, match="depends on sigma"):
                tuning.set_rule("ramp:down:0.5")
            with pytest.raises(ValueError, match="15 skip sites|skip sites"):
                tuning.set_rule("sites:0.5,0.5")
        with skip_tuning(net, "ramp:down:0.5") as tuning:
            tuning.set_rule("ramp:up:0.5")
            up = net(x, s, c)
        with skip_tuning(net, "ramp:up:0.5"):
            assert torch.equal(net(x, s, c), up)


def test_hook_token_follows_the_structure_of_attached_hooks(net):
    """Compiled networks are re-checked when hooks come or go, and reuse their code when a structure returns."""
    from skiptune.core import sigma as published
    from skiptune.skip import freeu

    before = published._GUARD.token
    with skip_tuning(net, "layer:0.7"):
        tuned = published._GUARD.token
        assert tuned != before
    assert published._GUARD.token == before
    with skip_tuning(net, "const:0.5"):
        assert published._GUARD.token == tuned  # same network, same mode, sigma-free: same structure
    with skip_tuning(net, "const:0.5", mode="norm"):
        assert published._GUARD.token not in (before, tuned)
    with skip_tuning(net, "none"):  # attaches nothing
        assert published._GUARD.token == before
    with freeu(net, "1.1,1.2,0.9,0.8"), skip_tuning(net, "layer:0.7"):
        assert published._GUARD.token not in (before, tuned)
    assert published._GUARD.token == before
