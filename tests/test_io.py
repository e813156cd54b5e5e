"""Checkpoints: our safetensors format, EDM pickles loaded without running code, malicious files."""

import os
import pickle
import sys

import pytest
import torch

import skiptune
from conftest import randomize
from edm_format import InertRecord, write_edm_pickle
from skiptune.core.checksums import state_dict_sha256
from skiptune.io import CheckpointError, UnsafePickleError, load_model, network_config, open_model, save_checkpoint
from skiptune.io.edm_pickle import read_edm_pickle
from skiptune.nets import build_network, preset_config


def _same_outputs(a, b, label_dim=0):
    x = torch.randn(2, a.img_channels, a.img_resolution, a.img_resolution)
    s = torch.tensor([0.2, 4.0])
    c = torch.eye(label_dim)[:2] if label_dim else None
    return torch.equal(a(x, s, c), b(x, s, c))


@pytest.mark.parametrize("name", ["adm-tiny", "ncsnpp-tiny", "ddpmpp-cifar10-cond-tiny"])
def test_safetensors_round_trip(tmp_path, name):
    net = randomize(load_model(name))
    path = save_checkpoint(net, tmp_path / "net.safetensors", extra={"note": "test"})
    loaded = open_model(path)
    back = loaded.net
    assert _same_outputs(net, back, net.label_dim)
    assert loaded.network == network_config(net) and loaded.extra == {"note": "test"} and loaded.loader == "skiptune"
    assert loaded.sha256 == state_dict_sha256(net)
    assert (tmp_path / "net.json").exists()


def test_corrupt_and_foreign_safetensors(tmp_path):
    net = load_model("ddpmpp-tiny")
    path = save_checkpoint(net, tmp_path / "net.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="without a skiptune config"):
        load_model(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "foreign.safetensors", arch="ddpmpp-tiny")


def test_raw_state_dict_with_arch(tmp_path):
    net = randomize(load_model("adm-tiny"))
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    back = load_model(tmp_path / "sd.pt", arch="adm-tiny")
    assert _same_outputs(net, back, net.label_dim)


def test_missing_and_unknown_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a preset"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "x.bin").write_bytes(b"123")
    with pytest.raises(CheckpointError, match="unsupported file type"):
        load_model(tmp_path / "x.bin")


@pytest.mark.parametrize("name", ["adm-tiny", "ncsnpp-tiny", "ddpmpp-cifar10-cond-tiny"])
def test_edm_pickle_loads_without_edm_code(tmp_path, name):
    cls, kwargs = preset_config(name)
    net = randomize(build_network(cls, kwargs), seed=3)
    write_edm_pickle(tmp_path / "net.pkl", net, kwargs)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    back = load_model(tmp_path / "net.pkl")
    assert type(back) is type(net)
    assert _same_outputs(net, back, net.label_dim)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    with skiptune.skip_tuning(back, "layer:0.7"):  # ready for skip tuning
        pass
    data = read_edm_pickle(tmp_path / "net.pkl")
    assert data["loss_fn"].class_name == "EDMLoss" and data["dataset_kwargs"]["path"] == "datasets/x.zip"


def _marker(tmp_path):
    return tmp_path / "PWNED"


def test_module_source_is_never_executed(tmp_path):
    """A known class name whose embedded module source would write a file: loads, source not run."""
    cls, kwargs = preset_config("ddpmpp-tiny")
    net = build_network(cls, kwargs)
    marker = _marker(tmp_path)
    evil_src = f"open({str(marker)!r}, 'w').write('x')\n"
    write_edm_pickle(tmp_path / "net.pkl", net, kwargs, module_src=evil_src)
    load_model(tmp_path / "net.pkl")
    assert not marker.exists()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _EvalPayload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (eval, (f"open({str(self.path)!r}, 'w')",))


@pytest.mark.parametrize("payload_cls,where", [
    (_Payload, "top"), (_EvalPayload, "top"), (_Payload, "init_kwargs"), (_EvalPayload, "dataset_kwargs"),
])
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, payload_cls, where):
    marker = _marker(tmp_path)
    path = tmp_path / "evil.pkl"
    if where == "top":
        path.write_bytes(pickle.dumps({"ema": payload_cls(marker)}))
    else:
        cls, kwargs = preset_config("ddpmpp-tiny")
        net = build_network(cls, kwargs)
        if where == "init_kwargs":
            write_edm_pickle(path, net, {**kwargs, "model_channels": payload_cls(marker)})
        else:
            write_edm_pickle(path, net, kwargs, extra={"dataset_kwargs": {"path": payload_cls(marker)}})
    with pytest.raises(UnsafePickleError, match="refusing to load global") as info:
        load_model(path)
    assert ("posix.system" in str(info.value) or "os.system" in str(info.value)
            or "builtins.eval" in str(info.value))
    assert not marker.exists()


def test_unknown_persistent_class_is_refused(tmp_path):
    marker = _marker(tmp_path)
    cls, kwargs = preset_config("ddpmpp-tiny")
    net = build_network(cls, kwargs)
    evil = InertRecord("Backdoor", {}, module_src=f"open({str(marker)!r}, 'w')\n")
    write_edm_pickle(tmp_path / "net.pkl", net, kwargs, extra={"augment_pipe": evil})
    with pytest.raises(UnsafePickleError, match="unknown persistent class 'Backdoor'"):
        load_model(tmp_path / "net.pkl")
    assert not marker.exists()


def test_malicious_tensor_storage_is_refused(tmp_path):
    """Storages arrive as torch.save bytes; they are read with torch's weights-only unpickler."""
    import io

    marker = _marker(tmp_path)
    inner = io.BytesIO()
    pickle.dump(_Payload(marker), inner, protocol=2)  # a legacy-looking blob that is really a payload
    import torch.storage as ts

    class Evil:
        def __reduce__(self):
            return (ts._load_from_bytes, (inner.getvalue(),))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"ema": Evil()}))
    with pytest.raises(UnsafePickleError, match="not a plain torch tensor blob"):
        load_model(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_truncated_pickle_and_missing_key(tmp_path):
    cls, kwargs = preset_config("ddpmpp-tiny")
    write_edm_pickle(tmp_path / "net.pkl", build_network(cls, kwargs), kwargs)
    data = (tmp_path / "net.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "cut.pkl")
    with pytest.raises(CheckpointError, match="no 'net' network"):
        load_model(tmp_path / "net.pkl", key="net")


def test_trust_code_without_edm_repo_explains(tmp_path):
    cls, kwargs = preset_config("ddpmpp-tiny")
    write_edm_pickle(tmp_path / "net.pkl", build_network(cls, kwargs), kwargs)
    with pytest.raises(ModuleNotFoundError, match="PYTHONPATH"):
        load_model(tmp_path / "net.pkl", trust_code=True)


# -- files that are not what their name says, and state dicts of other networks: short messages that say so -------

@pytest.mark.parametrize("name", ["net.pt", "net.pth", "net.pkl", "net.safetensors"])
def test_a_text_file_named_like_a_checkpoint_says_it_is_text(tmp_path, name):
    (tmp_path / name).write_text("<this is not a checkpoint>\n")
    with pytest.raises(CheckpointError, match="it is a text file") as e:
        load_model(tmp_path / name, arch="ddpmpp-tiny") if name.endswith(".pth") else load_model(tmp_path / name)
    assert str(tmp_path / name) in str(e.value) and ": 101" not in str(e.value)


def test_a_state_dict_of_another_network_is_summarised(tmp_path):
    from skiptune.io.uvit import describe_mismatch

    net = load_model("ddpmpp-tiny")
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "sd.pt", arch="adm-tiny")
    text = str(e.value)
    assert "\n" not in text and len(text) < 1000, text  # counts and a few keys, not every key
    assert "missing" in text and "unexpected" in text and "mis-shaped" in text and "more)" in text
    assert "look like an EDM SongUNet (DDPM++/NCSN++; 16x16, 3 channels, model_channels 16)" in text
    # keys that differ only by a prefix: said so instead of listing them all
    inner = {k.removeprefix("model."): v for k, v in net.state_dict().items()}
    summary = describe_mismatch({k: v.shape for k, v in net.state_dict().items()}, inner)
    assert "differ only by their prefix" in summary and "'model.'" in summary
    assert describe_mismatch({k: v.shape for k, v in net.state_dict().items()}, net.state_dict()) is None


def test_guess_architecture_names_known_key_layouts():
    from skiptune.io.uvit import guess_architecture

    def keys(name):
        return load_model(name).state_dict()

    assert guess_architecture(keys("ddpmpp-tiny")).startswith("an EDM SongUNet")
    assert guess_architecture(keys("adm-tiny")).startswith("an EDM DhariwalUNet (ADM")
    assert guess_architecture(keys("uvit-tiny")).startswith("a U-ViT (embed_dim")
    assert guess_architecture({"conv_in.weight": (4, 3, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (4, 4, 3, 3)}
                              ).startswith("a diffusers UNet")
    assert "guided-diffusion" in guess_architecture({"input_blocks.0.0.weight": (1,), "output_blocks.0.0.weight": (1,)})
    assert guess_architecture({"fc.weight": (2, 2)}) is None


def test_an_edm_pickle_whose_tensors_do_not_fit_its_arguments_is_summarised(tmp_path):
    cls, kwargs = preset_config("ddpmpp-tiny")
    net = build_network(cls, kwargs)
    write_edm_pickle(tmp_path / "net.pkl", net, {**kwargs, "model_channels": 2 * kwargs["model_channels"]})
    with pytest.raises(CheckpointError, match="tensors do not match.*mis-shaped keys") as e:
        load_model(tmp_path / "net.pkl")
    assert "\n" not in str(e.value) and len(str(e.value)) < 1500
