"""Options that do not apply, and options that crash (issue "No silent wrong results, no tracebacks").

One table of bad inputs through the real entry point (:func:`skiptune.cli.main`): each is refused with one
line naming the option (:func:`cli_faults.assert_fails_cleanly`). Then the behaviours behind the fixes:
presets are seeded (two loads agree, the global RNG is untouched), sampler options are checked against the
sampler's signature, ``--weights`` reaches every registered feature network and ``--weights-sha256`` lets
a custom Inception file be used, and what is recorded is what was done.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_faults import assert_fails_cleanly
from skiptune.cli import main
from skiptune.metrics import (
    INCEPTION_FILENAME,
    FeatureExtractor,
    InceptionV3,
    compute_reference,
    register_extractor,
    unregister_extractor,
)

PIXELS = "faults-pixels"
TRAIN_TINY = ["--model-channels", "8", "--channel-mult", "1,2", "--num-blocks", "1", "--attn", "none",
              "--batch", "4", "--lr-warmup", "4", "--no-progress", "--threads", "1"]
SAMPLE = ["sample", "--model", "demo-digits", "--nfe", "1", "--seeds", "0-1", "--no-progress", "--no-pngs"]
# light settings, so that the old code (which silently used the images there were) finished these rows quickly
ANALYZE = ["--no-db", "--no-progress"]
NORMS = ["analyze", "norms", *ANALYZE, "--sigmas", "5", "--batch", "512"]
COMPLEXITY = ["analyze", "complexity", *ANALYZE, "--rules", "none", "--sigmas", "5", "--estimator", "hutchinson",
              "--probes", "1"]
DSM = ["analyze", "dsm", *ANALYZE, "--rules", "none;const:0.7", "--sigmas", "5", "--no-lognormal"]
FINETUNE = ["analyze", "finetune", *ANALYZE, "--params=", "--full-steps", "0", "--compare-rules=", "--nfe", "1",
            "--seeds", "0-1", "--seed-sets", "1"]


def _pixel_extractor() -> FeatureExtractor:
    """Features = the 12 channel means of a 2x2 average pooling (no weights: the factory takes no options)."""

    def fn(x, wanted):
        return {"f": torch.nn.functional.avg_pool2d(x.float() / 255.0, x.shape[-1] // 2).flatten(1)}

    return FeatureExtractor(PIXELS, fn, {"f": 12})


def _tiny_inception() -> InceptionV3:
    """Width 1/16, 8 classes, He-normal convs (the default init decays to subnormal floats: slow)."""
    g = torch.Generator().manual_seed(0)
    net = InceptionV3(width=1 / 16, num_classes=8).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(2 / p[0].numel()))
    return net


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Image arrays, a feature file of the pixel extractor, and tiny Inception weights (.pth and EDM-style .pkl)."""
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    out = {"root": root}
    for name in ("a", "b"):
        out[name] = root / f"{name}.npz"
        np.savez(out[name], images=rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8))
    register_extractor(PIXELS, _pixel_extractor, overwrite=True)
    try:
        out["feats"] = root / "feats.npz"
        compute_reference(out["a"], out["feats"], extractor=PIXELS, keep_features=True)
    finally:
        unregister_extractor(PIXELS)
    state = _tiny_inception().state_dict()
    out["pth"] = root / "custom" / INCEPTION_FILENAME
    out["pth"].parent.mkdir()
    torch.save(state, out["pth"])
    out["pkl"] = root / "inception-2015-12-05.pkl"
    out["pkl"].write_bytes(pickle.dumps(state))  # a state dict: the safe loader reads it
    return out


@pytest.fixture
def pixels():
    register_extractor(PIXELS, _pixel_extractor, overwrite=True)
    yield PIXELS
    unregister_extractor(PIXELS)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------- the table of refusals

# (id, argv with {root}/{a}/{b}/{feats}/{pth}/{pkl}/{out} placeholders, strings the error line must name)
FAULTS = [
    # 1. options that do not apply (or cannot be done) are refused, not recorded as if applied
    ("sample-class-unconditional", [*SAMPLE, "--class", "3", "--out", "{out}"], ["class label 3",
                                                                                "unconditional"]),
    ("sample-class-out-of-range", ["sample", "--arch", "adm-tiny", *SAMPLE[3:], "--class", "10", "--out", "{out}"],
     ["class label 10", "0..9"]),
    ("train-data-size-0", ["train", "--data", "shapes", "--data-size", "0", "--steps", "1", "--out", "{out}",
                           *TRAIN_TINY], ["--data-size", ">= 1"]),
    ("train-data-size-digits", ["train", "--data", "digits", "--data-size", "100", "--steps", "1", "--out", "{out}",
                                *TRAIN_TINY], ["--data-size", "shapes"]),
    ("train-data-seed-digits", ["train", "--data", "digits", "--data-seed", "3", "--steps", "1", "--out", "{out}",
                                *TRAIN_TINY], ["--data-seed", "shapes"]),
    ("train-resolution-0", ["train", "--data", "digits", "--resolution", "0", "--steps", "1", "--out", "{out}",
                            *TRAIN_TINY], ["--resolution", ">= 1"]),
    ("train-resolution-negative", ["train", "--data", "shapes", "--resolution", "-8", "--steps", "1", "--out",
                                   "{out}", *TRAIN_TINY], ["--resolution", "-8"]),
    ("norms-n-too-many", [*NORMS, "--n", "100000", "--out", "{out}"], ["--n 100000", "only 300 images", "--n 300"]),
    ("norms-n-0", [*NORMS, "--n", "0", "--out", "{out}"], ["--n", ">= 1"]),
    ("norms-n-negative", [*NORMS, "--n", "-1", "--out", "{out}"], ["--n", "-1"]),
    ("complexity-n-too-many", [*COMPLEXITY, "--n", "100000", "--out", "{out}"], ["--n 100000", "only 300 images"]),
    ("dsm-n-too-many", [*DSM, "--n", "100000", "--out", "{out}"], ["--n 100000", "only 300 images"]),
    ("dsm-n-0", [*DSM, "--n", "0", "--out", "{out}"], ["--n", ">= 1"]),
    ("finetune-n-too-many", [*FINETUNE, "--n", "100000", "--out", "{out}"], ["--n 100000", "only 1497 images"]),
    ("finetune-n-negative", [*FINETUNE, "--n", "-5", "--out", "{out}"], ["--n", "-5"]),
    # 2. CMMD without CLIP features is refused (it would be immd under CLIP's name)
    ("eval-cmmd-pixels", ["eval", "--images", "{a}", "--ref", "{b}", "--metrics", "cmmd", "--features", PIXELS,
                          "--no-progress"],
     ["cmmd", "CLIP", PIXELS, "pip install 'skiptune[clip]'", "--features clip"]),
    ("eval-cmmd-with-fid", ["eval", "--images", "{a}", "--ref", "{b}", "--metrics", "fid,cmmd", "--features",
                            PIXELS, "--no-progress"], ["cmmd", "--features clip", "immd"]),
    ("eval-cmmd-inception", ["eval", "--images", "{a}", "--ref", "{b}", "--metrics", "cmmd", "--no-progress"],
     ["cmmd", "inception-v3", "skiptune[clip]"]),
    ("eval-cmmd-feature-file", ["eval", "--images", "{feats}", "--ref", "{feats}", "--metrics", "cmmd",
                                "--no-progress"], ["cmmd", PIXELS, "--features clip"]),
    ("eval-clip-not-installed", ["eval", "--images", "{a}", "--ref", "{b}", "--metrics", "cmmd", "--features",
                                 "clip", "--weights", "{pth}", "--no-progress"], ["open_clip", "skiptune[clip]"]),
    # 4. sampler options: unknown names and wrong types name the option, what the sampler takes, the type
    ("sample-option-unknown", [*SAMPLE, "--options", "foo=1", "--out", "{out}"], ["foo", "heun", "denoise_to_zero"]),
    ("sample-option-other-sampler", [*SAMPLE, "--options", "S_churn=1", "--out", "{out}"], ["S_churn", "heun"]),
    ("sample-option-not-a-number", [*SAMPLE, "--sampler", "edm_sde", "--options", "S_churn=abc", "--out", "{out}"],
     ["S_churn", "'abc'", "float"]),
    ("sample-option-not-an-int", [*SAMPLE, "--sampler", "unipc", "--options", "order=2.5", "--out", "{out}"],
     ["order", "2.5", "int"]),
    ("sample-option-not-a-choice", [*SAMPLE, "--sampler", "unipc", "--options", "variant=bh3", "--out", "{out}"],
     ["variant", "bh1, bh2"]),
    ("sample-option-not-a-bool", [*SAMPLE, "--sampler", "dpmpp_2m", "--options", "lower_order_final=maybe",
                                  "--out", "{out}"], ["lower_order_final", "bool"]),
    ("sample-option-fixed-order", [*SAMPLE, "--sampler", "dpmpp_2m", "--options", "order=3", "--out", "{out}"],
     ["order", "dpmpp_2m", "lower_order_final"]),
    # 5. feature-network options: --weights where the network takes none, checksums
    ("eval-weights-not-taken", ["eval", "--images", "{a}", "--ref", "{b}", "--features", PIXELS, "--weights",
                                "{pth}", "--no-progress"], [PIXELS, "weights"]),
    ("eval-sha-not-taken", ["eval", "--images", "{a}", "--ref", "{b}", "--features", "digits-classifier",
                            "--weights-sha256", "any", "--no-progress"], ["digits-classifier", "expected_sha256"]),
    ("eval-custom-inception-unchecked", ["eval", "--images", "{a}", "--ref", "{b}", "--features", "inception-v3",
                                         "--weights", "{pth}", "--no-progress"],
     ["has sha256", "--weights-sha256 any"]),
    ("eval-sha-malformed", ["eval", "--images", "{a}", "--ref", "{b}", "--weights", "{pth}", "--weights-sha256",
                            "abc", "--no-progress"], ["--weights-sha256", "'abc'", "64 hexadecimal"]),
    ("eval-sha-wrong", ["eval", "--images", "{a}", "--ref", "{b}", "--weights", "{pth}", "--weights-sha256",
                        "0" * 64, "--no-progress"], ["expected " + "0" * 64]),
    ("eval-edm-pkl-sha-wrong", ["eval", "--images", "{a}", "--ref", "{b}", "--features", "inception-v3-edm-pkl",
                                "--weights", "{pkl}", "--weights-sha256", "f" * 64, "--no-progress"],
     ["inception-2015-12-05.pkl", "expected " + "f" * 64]),
    ("ref-sha-malformed", ["ref", "--data", "{a}", "--out", "{out}/ref.npz", "--weights-sha256", "xyz",
                           "--no-progress"], ["--weights-sha256", "'xyz'"]),
]


@pytest.mark.parametrize("argv, names", [pytest.param(a, n, id=i) for i, a, n in FAULTS])
def test_bad_option_is_refused_cleanly(argv, names, files, pixels, tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory either
    subs = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out")}
    argv = [a.format(**subs) for a in argv]
    assert_fails_cleanly(argv, capsys, names=names, untouched=[tmp_path, files["root"]])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.*")), "outputs were written"


def test_every_class_of_the_issue_has_rows():
    ids = [row[0] for row in FAULTS]
    for prefix in ("sample-class", "train-", "norms-", "complexity-", "dsm-", "finetune-", "eval-cmmd",
                   "sample-option", "eval-weights", "eval-sha", "ref-sha"):
        assert any(i.startswith(prefix) for i in ids), prefix
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------------------ 3. seeded presets


def test_presets_load_with_the_same_weights_and_leave_the_global_rng_alone():
    from skiptune.io import open_model
    from skiptune.nets.presets import build_preset, preset_seed

    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a, b = open_model("adm-tiny"), open_model("adm-imagenet64-tiny")  # an alias and its full name
    assert torch.equal(torch.get_rng_state(), before), "building a preset moved the global torch RNG"
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.sha256 == b.sha256 == open_model("adm-tiny").sha256
    assert a.extra == b.extra == {"init_seed": preset_seed("adm-tiny")}
    assert a.loader == "preset"
    # a different preset has a different seed; an explicit seed gives other (but again reproducible) weights
    assert preset_seed("ddpmpp-tiny") != preset_seed("adm-tiny")
    c, d = build_preset("ddpmpp-tiny", seed=7), build_preset("ddpmpp-tiny", seed=7)
    assert all(torch.equal(x, y) for x, y in zip(c.state_dict().values(), d.state_dict().values(), strict=True))
    e = build_preset("ddpmpp-tiny")
    assert not all(torch.equal(x, y) for x, y in zip(c.state_dict().values(), e.state_dict().values(), strict=True))
    assert torch.equal(torch.get_rng_state(), before)


def test_sampling_a_preset_twice_uses_the_same_weights(tmp_path, capsys, one_thread):
    runs, shas = [], []
    for name in ("one", "two"):
        assert main(["sample", "--arch", "ddpmpp-tiny", "--nfe", "1", "--seeds", "0-1", "--no-pngs", "--no-progress",
                     "--out", str(tmp_path / name)]) == 0
        runs.append(np.load(tmp_path / name / "images.npz")["images"])
        shas.append(json.loads((tmp_path / name / "config.json").read_text())["config"]["model"]["sha256"])
    assert shas[0] == shas[1]  # the recorded weights checksum: one network, not two random draws
    assert np.array_equal(runs[0], runs[1])


# ------------------------------------------------------------------------------------ 4. sampler options


def test_every_sampler_accepts_its_own_defaults_and_refuses_the_rest():
    from skiptune.sampling.samplers import SAMPLERS, check_sampler_options, sampler_options

    for name in SAMPLERS:
        options = sampler_options(name)
        assert not {"extra_args", "callback", "noise"} & set(options), name
        check_sampler_options(name, {k: default for k, (_, default) in options.items()})
        with pytest.raises(ValueError, match=f"sampler {name!r} has no option 'nope'"):
            check_sampler_options(name, {"nope": 1})
    check_sampler_options("edm_sde", {"S_churn": 1, "S_tmax": math.inf})  # an int where a float is expected
    for bad in ({"S_churn": True}, {"S_churn": "1"}, {"S_churn": math.nan}):
        with pytest.raises(ValueError, match="S_churn.*float"):
            check_sampler_options("edm_sde", bad)


def test_valid_sampler_options_run_and_are_recorded(tmp_path, capsys, one_thread):
    out = tmp_path / "s"
    assert main(["sample", "--model", "demo-digits", "--sampler", "edm_sde", "--nfe", "3", "--seeds", "0-1",
                 "--options", "S_churn=10,S_noise=1.003", "--no-pngs", "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["sampling"]["options"] == {"S_churn": 10, "S_noise": 1.003}
    assert config["sampling"]["nfe"] == 3


def test_a_class_label_on_a_conditional_net_is_used_and_recorded(tmp_path, capsys, one_thread):
    out = tmp_path / "c"
    assert main(["sample", "--arch", "adm-tiny", "--nfe", "1", "--seeds", "0-2", "--class", "3", "--no-pngs",
                 "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["class_label"] == 3
    assert np.load(out / "images.npz")["labels"].tolist() == [3, 3, 3]


# ------------------------------------------------------------------------------------ 5. feature networks


@pytest.mark.filterwarnings("ignore:FID from")
def test_weights_reach_the_edm_pickle_loader(files, tmp_path, capsys, one_thread):
    out = tmp_path / "m.json"
    assert main(["eval", "--images", str(files["a"]), "--ref", str(files["b"]), "--features", "inception-v3-edm-pkl",
                 "--weights", str(files["pkl"]), "--no-progress", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())["fid"]
    assert rec["extractor"] == "inception-v3-statedict-pickle" and rec["weights_sha256"] == _sha(files["pkl"])
    # the checksum option works here too: the file's own sha256 is accepted
    assert main(["eval", "--images", str(files["a"]), "--ref", str(files["b"]), "--features", "inception-v3-edm-pkl",
                 "--weights", str(files["pkl"]), "--weights-sha256", _sha(files["pkl"]).upper(),
                 "--no-progress"]) == 0


@pytest.mark.filterwarnings("ignore:FID from")
@pytest.mark.parametrize("sha", ["any", "own"])
def test_a_custom_inception_file_is_used_when_the_user_says_so(sha, files, tmp_path, capsys, one_thread):
    own = _sha(files["pth"])
    ref, out = tmp_path / "ref.npz", tmp_path / "m.json"
    given = own if sha == "own" else sha
    assert main(["ref", "--data", str(files["b"]), "--out", str(ref), "--weights", str(files["pth"]),
                 "--weights-sha256", given, "--no-progress"]) == 0
    assert main(["eval", "--images", str(files["a"]), "--ref", str(ref), "--weights", str(files["pth"]),
                 "--weights-sha256", given, "--no-progress", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())["fid"]
    assert rec["extractor"] == "inception-v3-custom" and rec["weights_sha256"] == own  # the file's own checksum
    assert rec["n"] == 6 and rec["n_ref"] == 6 and math.isfinite(rec["value"])


def test_every_builtin_feature_network_takes_weights():
    import inspect

    from skiptune.metrics.extractor import _REGISTRY, available_extractors, factory_options

    available_extractors()  # the entry points too
    for name in ("inception-v3", "inception-v3-edm-pkl", "clip", "digits-classifier", "shapes-classifier"):
        takes = factory_options(_REGISTRY[name])
        assert takes is None or "weights" in takes, (name, takes)
    for name in ("inception-v3", "inception-v3-edm-pkl", "clip"):
        assert "expected_sha256" in inspect.signature(_REGISTRY[name]).parameters, name


# ------------------------------------------------------------------------------------ 1. what is recorded


def test_train_records_the_data_it_used(tmp_path, capsys, one_thread):
    out = tmp_path / "t"
    assert main(["train", "--data", "shapes", "--data-size", "12", "--data-seed", "2", "--resolution", "8",
                 "--steps", "1", "--out", str(out), *TRAIN_TINY]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["train"]["data_size"], config["dataset"]["size"]) == (12, 12)
    assert (config["train"]["resolution"], config["dataset"]["resolution"]) == (8, 8)
    assert config["train"]["data_seed"] == 2 and "seed=2" in config["dataset"]["source"]


def test_library_refuses_sizes_that_would_be_ignored():
    from skiptune.train import TrainConfig
    from skiptune.train.data import load_dataset

    for kwargs, match in (({"size": 0}, "data_size must be"), ({"resolution": 0}, "resolution must be"),
                          ({"size": 5}, "applies only to the generated 'shapes'"),
                          ({"seed": 1}, "data_seed applies only")):
        with pytest.raises(ValueError, match=match):
            load_dataset("digits", "test", **kwargs)
    with pytest.raises(ValueError, match="data_size applies only"):
        TrainConfig(data="digits", data_size=10, steps=1).validate()
    TrainConfig(data="shapes", data_size=10, data_seed=3, steps=1).validate()
    assert len(load_dataset("shapes", "test", size=3, resolution=8)) == 3


def test_dataset_head_refuses_more_images_than_there_are():
    from skiptune.train.data import load_dataset

    ds = load_dataset("digits", "test", resolution=8)
    head = ds.head(5, what="--n")
    assert len(head) == 5 and torch.equal(head.images, ds.images[:5]) and torch.equal(head.labels, ds.labels[:5])
    assert ds.head(None) is ds and len(ds.head(len(ds))) == len(ds)
    for n in (0, -1, len(ds) + 1):
        with pytest.raises(ValueError, match="--n"):
            ds.head(n, what="--n")
