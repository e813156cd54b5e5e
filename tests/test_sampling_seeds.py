"""Per-seed noise: sample i depends only on seed i, whatever batch it falls in."""

from __future__ import annotations

import pytest
import torch

from skiptune.sampling import SAMPLERS, GaussianMixture, SeedNoise, edm_sigmas, parse_seeds, seed_batches
from skiptune.sampling.noise import MAX_SEEDS

# A mixture in 3 x 4 x 4 = 48 dimensions, so samples look like tiny images.
_gen = torch.Generator().manual_seed(1234)
MIX = GaussianMixture([0.5, 0.25, 0.25], torch.randn(3, 48, generator=_gen, dtype=torch.float64), [0.5, 0.3, 0.8])
SHAPE = (3, 4, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


def generate(seeds: list[int], batch_size: int, name: str, opts: dict) -> torch.Tensor:
    sigmas = edm_sigmas(8)
    out = []
    for chunk in seed_batches(seeds, batch_size):
        noise = SeedNoise(chunk)
        x = noise.randn(SHAPE).to(torch.float64) * sigmas[0]
        out.append(SAMPLERS[name](MIX, x, sigmas, noise=noise, **opts))
    return torch.cat(out)


@pytest.mark.parametrize(
    "name,opts",
    [
        ("edm_sde", {"S_churn": 30.0, "S_noise": 1.007}),
        ("ddim", {"eta": 0.7}),
        ("heun", {}),
        ("unipc", {}),
    ],
)
def test_batch_size_invariance(name, opts):
    """Every random draw is per seed, so batches change only the rounding of the batched float64 arithmetic
    (some BLAS kernels, e.g. MKL's with AVX-512, depend on the batch size): 1e-13 here, while sharing a
    draw with another seed would move a sample by O(1)."""
    seeds = list(range(100, 164))
    ref = generate(seeds, 64, name, opts)
    assert (ref[0] - ref[1]).abs().max() > 0.1  # distinct seeds give distinct samples, far above the tolerance
    for bs in (1, 7):
        torch.testing.assert_close(generate(seeds, bs, name, opts), ref, rtol=0, atol=1e-10, msg=f"batch {bs}")
    # And a seed's sample does not depend on which other seeds share its batch.
    mixed = generate([150, 3, 101], 3, name, opts)
    torch.testing.assert_close(mixed[0], ref[50], rtol=0, atol=1e-10)
    torch.testing.assert_close(mixed[2], ref[1], rtol=0, atol=1e-10)


def test_stochastic_sampler_uses_the_noise():
    a = generate(list(range(4)), 4, "edm_sde", {"S_churn": 30.0})
    b = generate(list(range(4)), 4, "heun", {})
    assert not torch.equal(a, b)


def test_seed_noise_streams():
    a = SeedNoise([5, 6]).randn([3])
    b = SeedNoise([6]).randn([3])
    assert a.dtype == torch.float32 and torch.equal(a[1], b[0])
    expect = torch.randn(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], expect)
    with pytest.raises(ValueError, match="2 seeds"):
        SeedNoise([1, 2]).randn_like(torch.zeros(3, 1))


def test_parse_seeds():
    assert parse_seeds("0-3,10,12-13") == [0, 1, 2, 3, 10, 12, 13]
    assert parse_seeds(7) == [7] and parse_seeds([1, 2]) == [1, 2]
    assert list(seed_batches("0-6", 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    for bad in ("3-1", "1,,2", "-5"):
        with pytest.raises(ValueError):
            parse_seeds(bad)
    assert parse_seeds("5, 0 - 2") == [5, 0, 1, 2]  # order kept, spaces ignored
    assert len(parse_seeds(f"0-{MAX_SEEDS - 1}")) == MAX_SEEDS  # the limit itself is allowed


@pytest.mark.parametrize("spec,message", [
    # a seed given twice: the npz would hold its image twice while images/ holds one PNG
    ("0-3,2-5", r"repeats 2 seeds \(2-3\)"),
    ("7,0-9", r"repeats 1 seed \(7\)"),
    ("0-9,5,3-4,20-30,25", r"repeats 4 seeds \(3-5,25\)"),
    ("0-99999,0-99999", r"repeats 100000 seeds \(0-99999\)"),
    ([1, 2, 2], r"repeats 1 seed \(2\)"),
    # absurd lists: refused before any list is built (no hang, no MemoryError or OverflowError)
    ("0-99999999999", r"holds 100000000000 seeds, more than the 10000000"),
    ("0-5000000,6000000-11000000", "more than the 10000000"),
    ("0-9223372036854775808", r"seed 9223372036854775808 outside \[0, 2\^63\)"),
    ("99999999999999999999999", "outside"),
    ("-5", "outside"),
    # not seeds: an InputError naming the element, not int()'s ValueError
    ("1-2-3", "element '1-2-3' is not a seed"),
    ("0-x", "element '0-x' is not a seed"),
    ("5-", "element '5-' is not a seed"),
    ("", "empty element"),
    (["x"], "'x' is not an integer"),
])
def test_parse_seeds_refuses_repeated_absurd_and_malformed_lists(spec, message):
    from skiptune.core.errors import InputError

    with pytest.raises(InputError, match=message):
        parse_seeds(spec)


def test_nothing_that_reads_seed_lists_accepts_a_repeated_seed():
    from skiptune.runs.sweep import seed_sets

    with pytest.raises(ValueError, match="repeats"):
        seed_sets("0-3,3", 2)
    with pytest.raises(ValueError, match="repeats"):
        SeedNoise([4, 4])
    with pytest.raises(ValueError, match="repeats"):
        list(seed_batches("0-9,9", 4))
