"""Decoding latents with a diffusers autoencoder from a local folder: against diffusers' own decode, batching,
the scale, the folder's sha256, and an error that names the problem and the fix for every bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, VQModel  # noqa: E402

from skiptune.core.checksums import file_sha256  # noqa: E402
from skiptune.core.errors import CheckpointError, InputError, MissingFileError  # noqa: E402
from skiptune.io import vae as vae_module  # noqa: E402
from skiptune.io.vae import check_decoder_fits, folder_sha256, load_decoder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, latent_channels=4, sample_size=16,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def tiny_kl(seed: int = 0, **kw) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**{**TINY, **kw}).eval()


def tiny_vq(seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(**{**TINY, "latent_channels": 3}, num_vq_embeddings=16, scaling_factor=0.5).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{'kl': (model, folder), 'vq': (model, folder)}: tiny random autoencoders and their save_pretrained folders."""
    root = tmp_path_factory.mktemp("autoencoders")
    out = {}
    for name, model in (("kl", tiny_kl()), ("vq", tiny_vq())):
        model.save_pretrained(root / name)
        out[name] = (model, root / name)
    return out


def latents(n=5, c=4, side=4, seed=0):
    return torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(seed))


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


# --- what it computes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kl", "vq"])
def test_decode_is_diffusers_decode_of_latents_over_scale(saved, name):
    model, folder = saved[name]
    dec = load_decoder(folder)
    assert dec.kind == type(model).__name__ and dec.scale == model.config.scaling_factor
    assert (dec.latent_channels, dec.out_channels, dec.downsample) == (model.config.latent_channels, 3, 2)
    z = latents(c=dec.latent_channels)
    images = dec.decode(z)
    with torch.no_grad():
        want = model.decode(z / model.config.scaling_factor).sample
    assert images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.shape == (5, *dec.image_shape(z.shape)) == (5, 3, 8, 8)
    torch.testing.assert_close(images, want, rtol=0, atol=1e-6)
    assert images.abs().max() > 0.01  # not a degenerate decoder
    # numpy latents (as latents.npz stores them) decode the same
    torch.testing.assert_close(dec.decode(z.numpy()), images, rtol=0, atol=0)


def test_scale_default_is_the_config_and_override(saved):
    model, folder = saved["kl"]
    assert load_decoder(folder).scale == 0.18215  # AutoencoderKL's (and U-ViT's ImageNet-256) factor
    assert load_decoder(saved["vq"][1]).scale == 0.5  # read from config.json, not assumed
    dec = load_decoder(folder, scale=0.5)
    z = latents()
    with torch.no_grad():
        want = model.decode(z / 0.5).sample
    torch.testing.assert_close(dec.decode(z), want, rtol=0, atol=1e-6)
    assert (dec.decode(z) - load_decoder(folder).decode(z)).abs().max() > 1e-3


def test_batch_size_does_not_change_the_images(saved):
    dec = load_decoder(saved["kl"][1])
    z = latents()
    whole = dec.decode(z, batch_size=5)
    for bs in (1, 2, 16):
        # float32 rounding: the convolutions may pick another algorithm for another batch size
        torch.testing.assert_close(dec.decode(z, batch_size=bs), whole, rtol=0, atol=1e-5 * float(whole.abs().max()))
    assert dec.decode(z[:0]).shape == (0, 3, 8, 8)


def test_sha256_identifies_config_and_weights(saved, tmp_path):
    folder = saved["kl"][1]
    a, b = load_decoder(folder), load_decoder(folder, scale=0.3)
    assert a.sha256 == b.sha256 and len(a.sha256) == 64  # the scale is recorded beside it, not in it
    files = {"config.json": file_sha256(folder / "config.json"),
             "diffusion_pytorch_model.safetensors": file_sha256(folder / "diffusion_pytorch_model.safetensors")}
    assert a.files == files and a.sha256 == folder_sha256(files)
    assert a.describe()["sha256"] == a.sha256 and a.describe()["scale"] == 0.18215
    tiny_kl(seed=1).save_pretrained(tmp_path / "other")  # other weights, same config
    assert load_decoder(tmp_path / "other").files["config.json"] == files["config.json"]
    assert load_decoder(tmp_path / "other").sha256 != a.sha256
    edited = copy_folder(folder, tmp_path / "edited")
    cfg = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**cfg, "scaling_factor": 0.25}))
    assert load_decoder(edited).sha256 != a.sha256 and load_decoder(edited).scale == 0.25


def test_pipeline_folder_pickle_weights_and_shards(saved, tmp_path):
    model, folder = saved["kl"]
    z = latents()
    want = load_decoder(folder).decode(z)
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    index = {"_class_name": "LDMPipeline", "vae": ["diffusers", "AutoencoderKL"]}
    (pipe / "model_index.json").write_text(json.dumps(index))
    copy_folder(folder, pipe / "vae")
    dec = load_decoder(pipe)
    assert dec.source == str(pipe / "vae") and torch.equal(dec.decode(z), want)
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)  # a weights-only pickle is read as tensors
    dec = load_decoder(tmp_path / "bin")
    assert list(dec.files) == ["config.json", "diffusion_pytorch_model.bin"] and torch.equal(dec.decode(z), want)
    model.save_pretrained(tmp_path / "both")
    model.save_pretrained(tmp_path / "both", safe_serialization=False)
    assert "diffusion_pytorch_model.safetensors" in load_decoder(tmp_path / "both").files  # safetensors preferred
    model.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    dec = load_decoder(tmp_path / "shards")
    assert len(dec.files) > 3 and torch.equal(dec.decode(z), want)
    next((tmp_path / "shards").glob("*-00001-of-*.safetensors")).unlink()
    with pytest.raises(MissingFileError, match="shards.*missing.*copy every shard"):
        load_decoder(tmp_path / "shards")


def test_check_decoder_fits_before_sampling(saved):
    dec = load_decoder(saved["kl"][1])
    assert check_decoder_fits(dec, (4, 32, 32)) == (3, 64, 64) == check_decoder_fits(dec, (7, 4, 32, 32))
    assert check_decoder_fits(dec, (4, 32, 32), model_scale=0.18215) == (3, 64, 64)
    with pytest.raises(InputError, match=r"3 channels.*4-channel latents.*autoencoder the model was trained with"):
        check_decoder_fits(dec, (3, 32, 32))
    with pytest.raises(InputError, match=r"scaled by 0.13025.*uses scale 0.18215.*scale=0.13025"):
        check_decoder_fits(dec, (4, 32, 32), model_scale=0.13025)
    with pytest.raises(InputError, match=r"\[C, H, W\] or \[N, C, H, W\]"):
        check_decoder_fits(dec, (4, 32))


# --- errors -------------------------------------------------------------------------------------------


def test_folder_errors(saved, tmp_path):
    with pytest.raises(MissingFileError, match="no such folder.*save_pretrained.*Nothing is downloaded"):
        load_decoder(tmp_path / "absent")
    (tmp_path / "vae.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="is a file.*not a folder.*save_pretrained.*convert"):
        load_decoder(tmp_path / "vae.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json.*save_pretrained"):
        load_decoder(tmp_path / "empty")
    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="pipeline without a vae/.*no autoencoder"):
        load_decoder(tmp_path / "pipe")
    (tmp_path / "sched").mkdir()
    (tmp_path / "sched" / "scheduler_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="scheduler folder, not an autoencoder"):
        load_decoder(tmp_path / "sched")
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable JSON config.*save_pretrained"):
        load_decoder(tmp_path / "garbled")
    (tmp_path / "anon").mkdir()
    (tmp_path / "anon" / "config.json").write_text(json.dumps({"latent_channels": 4}))
    with pytest.raises(CheckpointError, match="no _class_name.*not written by.*save_pretrained"):
        load_decoder(tmp_path / "anon")


def test_a_unet_or_another_autoencoder_is_named(tmp_path):
    from diffusers_models import tiny_unet2d

    tiny_unet2d().save_pretrained(tmp_path / "unet")
    with pytest.raises(CheckpointError, match=r"holds a UNet2DModel, a denoising network, not an autoencoder.*vae/"):
        load_decoder(tmp_path / "unet")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny"}))
    with pytest.raises(CheckpointError, match="holds a AutoencoderTiny.*AutoencoderKL or VQModel"):
        load_decoder(tmp_path / "tiny")


def test_kind_errors(saved):
    assert load_decoder(saved["kl"][1], kind="kl").kind == "AutoencoderKL"
    assert load_decoder(saved["vq"][1], kind="VQModel").kind == "VQModel"
    with pytest.raises(CheckpointError, match="describes a AutoencoderKL, not a VQModel.*kind='auto'"):
        load_decoder(saved["kl"][1], kind="VQModel")
    with pytest.raises(InputError, match="unknown decoder kind 'gan'.*'auto'"):
        load_decoder(saved["kl"][1], kind="gan")


def test_weights_errors(saved, tmp_path):
    model, folder = saved["kl"]
    (tmp_path / "noweights").mkdir()
    shutil.copy(folder / "config.json", tmp_path / "noweights")
    with pytest.raises(MissingFileError, match="no weights.*diffusion_pytorch_model.safetensors.*copy the weights"):
        load_decoder(tmp_path / "noweights")
    (tmp_path / "noweights" / "vae.ckpt").write_bytes(b"x")
    with pytest.raises(MissingFileError, match="it has vae.ckpt"):
        load_decoder(tmp_path / "noweights")
    # weights of another configuration: every mis-shaped tensor is a mismatch, none is silently re-initialised
    tiny_kl(latent_channels=8).save_pretrained(tmp_path / "wide")
    shutil.copy(folder / "config.json", tmp_path / "wide")
    with pytest.raises(CheckpointError, match="do not fit the AutoencoderKL.*size mismatch.*config.json saved with"):
        load_decoder(tmp_path / "wide")
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    partial = copy_folder(folder, tmp_path / "partial")
    save_file({k: v for k, v in state.items() if k != "decoder.conv_in.bias"},
              partial / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing tensors \(decoder.conv_in.bias\).*config.json saved with"):
        load_decoder(partial)
    save_file({**state, "extra.weight": torch.zeros(2)}, partial / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 unexpected tensors \(extra.weight\)"):
        load_decoder(partial)


def test_a_pickle_that_needs_code_is_refused(saved, tmp_path, capsys):
    folder = copy_folder(saved["kl"][1], tmp_path / "evil")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"cbuiltins\nprint\n(S'code ran'\ntR.")
    with pytest.raises(CheckpointError, match="not a weights-only torch file.*never runs code.*safetensors"):
        load_decoder(folder)
    assert "code ran" not in capsys.readouterr().out


def test_argument_and_latent_errors(saved, monkeypatch):
    folder = saved["kl"][1]
    for bad in (0, -1.0, float("nan"), "x", True):
        with pytest.raises(InputError, match="scale must be a finite number > 0.*0.18215"):
            load_decoder(folder, scale=bad)
    with pytest.raises(InputError, match="unsupported decoder dtype.*float32"):
        load_decoder(folder, dtype=torch.int8)
    with pytest.raises(InputError, match="decoder device gpu7: not a torch device.*use cpu"):
        load_decoder(folder, device="gpu7")
    assert load_decoder(folder, dtype="float64").decode(latents(n=1)).dtype == torch.float32
    dec = load_decoder(folder)
    with pytest.raises(InputError, match=r"3 channels but the AutoencoderKL.*4-channel.*--vae"):
        dec.decode(latents(c=3))
    with pytest.raises(InputError, match=r"\[N, C, H, W\].*latents\[None\]"):
        dec.decode(latents()[0])
    with pytest.raises(InputError, match="floating-point"):
        dec.decode(np.zeros((1, 4, 4, 4), dtype=np.int64))
    for bad in (0, 2.5, None):
        with pytest.raises(InputError, match="batch_size must be a positive integer"):
            dec.decode(latents(), batch_size=bad)

    def absent():
        raise ImportError("no diffusers")

    monkeypatch.setattr(vae_module, "require_diffusers", absent)
    with pytest.raises(CheckpointError, match=r"optional diffusers package: pip install 'skiptune\[diffusers\]'"):
        load_decoder(folder)
