"""EDM's / StyleGAN3's Inception pickle (``inception-2015-12-05.pkl``), loaded only as safely as possible.

What that file is (from EDM's ``fid.py`` and StyleGAN3's ``metrics/``; the file itself cannot be
fetched here): a Python pickle, loaded there with plain ``pickle.load``, holding a TorchScript
translation of the TF 2015-12-05 graph, called as ``net(uint8_images, return_features=True)`` for
the 2048-d pool features and ``net(uint8_images, no_output_bias=True)`` for the class
probabilities used by the Inception Score. Rebuilding it needs EDM's ``torch_utils``/``dnnlib`` on
the path and runs code stored in the file (persistence source and/or a TorchScript program).

Policy here:

1. The file is read with the allow-list unpickler of :mod:`skiptune.io.edm_pickle` (the one EDM
   network pickles go through): a state dict saved with ``pickle`` loads and is mapped onto
   :class:`InceptionV3`; anything else -- the detector's persistent class, TorchScript, arbitrary
   globals -- is refused with :class:`UnsafePickleError`, whose message lists every global the
   file references (:func:`scan_pickle_globals` reads opcodes only; nothing is imported or run).
2. ``trust_code=True`` runs the stock ``pickle.load`` (EDM's ``torch_utils``/``dnnlib`` must be
   importable) and wraps the detector. The torch-fidelity ``.pth`` (same TF weights, loaded with
   ``torch.load(weights_only=True)``) is the recommended safe route.

Not verified against the real file (unavailable offline); its sha256 is not published, so the
file's actual sha256 is what gets recorded.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from skiptune.core.errors import InputError, UnsafePickleError
from skiptune.core.safe_pickle import SafeUnpickler

from .errors import MetricsError, MissingWeightsError
from .extractor import FeatureExtractor, check_weights_sha256, file_sha256, normalize_sha256
from .inception import INCEPTION_METRIC_FEATURES, WEIGHTS_ENV, InceptionV3, inception_extractor

EDM_INCEPTION_FILENAME = "inception-2015-12-05.pkl"
EDM_INCEPTION_URL = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl"
EDM_NAME = "inception-v3-tf2015-edm-pkl"

_STRING_OPS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def scan_pickle_globals(data: bytes) -> list[str]:
    """``'module.name'`` of every global (class/function) a pickle references, in order, deduplicated.

    Reads opcodes only (:func:`pickletools.genops`); nothing is imported or run.
    """
    memo: dict[int, object] = {}
    recent: list[object] = []
    found: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in _STRING_OPS:
            recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name in _GET_OPS:
            recent.append(memo.get(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in _PUT_OPS:
            memo[arg] = recent[-1] if recent else None
        elif name == "GLOBAL" or name == "INST":
            found.append(str(arg).replace(" ", ".", 1))
            recent.append(None)
        elif name == "STACK_GLOBAL":
            mod, attr = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            found.append(f"{mod}.{attr}")
            recent.append(None)
        elif name not in ("PROTO", "FRAME", "MARK", "STOP", "POP", "POP_MARK"):
            recent.append(None)
    return list(dict.fromkeys(found))


def find_edm_inception(path: str | os.PathLike | None = None) -> Path:
    """Locate ``inception-2015-12-05.pkl``: ``path`` (file or directory), else ``$SKIPTUNE_WEIGHTS``."""
    if path is not None:
        p = Path(path)
        candidates = [p] if not p.is_dir() else [p / EDM_INCEPTION_FILENAME]
    else:
        candidates = [
            Path(d) / EDM_INCEPTION_FILENAME for d in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep) if d
        ]
    for c in candidates:
        if c.is_file():
            return c
    raise MissingWeightsError(
        f"EDM Inception pickle {EDM_INCEPTION_FILENAME!r} not found (looked at: "
        f"{', '.join(map(str, candidates)) or 'nothing; $' + WEIGHTS_ENV + ' is unset'}); its sha256 is not "
        f"published. Put it in ${WEIGHTS_ENV} or pass its path; on a machine with internet it is at "
        f"{EDM_INCEPTION_URL}. The safe alternative is the torch-fidelity .pth (extractor 'inception-v3')."
    )


def load_edm_inception(
    weights: str | os.PathLike | None = None,
    *,
    expected_sha256: str | None = None,
    trust_code: bool = False,
    device: torch.device | str = "cpu",
    path: str | os.PathLike | None = None,
) -> FeatureExtractor:
    """An extractor from EDM's Inception pickle (features ``pool`` and ``probs``), per the module policy.

    Args:
        weights: the pickle, or a directory holding it (default: ``$SKIPTUNE_WEIGHTS``); ``path`` is
            the former name of this argument.
        expected_sha256: checksum the file must have (64 hex digits); ``None`` or ``'any'`` (the default,
            since no checksum is published) accepts it. The file's own sha256 is always recorded.

    Raises:
        MissingWeightsError: the file is not found.
        ChecksumMismatchError: the file's sha256 differs from ``expected_sha256``.
        UnsafePickleError: the pickle would import/run code and ``trust_code`` is False.
        MetricsError: the trusted load failed (e.g. EDM's ``torch_utils`` is not importable).
    """
    if path is not None:
        if weights is not None and Path(weights) != Path(path):
            raise InputError(f"give the pickle once: weights={weights!r} and path={path!r} differ")
        weights = path
    want = normalize_sha256(expected_sha256)
    file = find_edm_inception(weights)
    data = file.read_bytes()
    sha = file_sha256(file)
    check_weights_sha256(file, sha, want)
    if zipfile.is_zipfile(io.BytesIO(data)):
        return _from_zip(file, data, sha, trust_code, device)
    if not trust_code:
        try:
            obj = SafeUnpickler(io.BytesIO(data)).load()
        except UnsafePickleError as e:
            named = scan_pickle_globals(data)
            raise UnsafePickleError(
                f"{file}: {e}. The pickle references {named[:8]}{' ...' if len(named) > 8 else ''}; "
                "loading it runs code stored in or named by the file. Use the torch-fidelity weights "
                "(extractor 'inception-v3', loaded without running code), or pass trust_code=True if you "
                "trust this file."
            ) from None
        return _from_state_dict(obj, sha, file, device)
    try:
        net = pickle.loads(data)  # explicit opt-in: runs code named by / stored in the file
    except ModuleNotFoundError as e:
        raise MetricsError(
            f"loading {file} needs module {e.name!r}: put the EDM (or StyleGAN3) repository on PYTHONPATH so "
            "that torch_utils and dnnlib import"
        ) from e
    if isinstance(net, dict) and all(isinstance(v, torch.Tensor) for v in net.values()):
        return _from_state_dict(net, sha, file, device)
    return _wrap_detector(net, sha, device)


def _from_zip(
    file: Path, data: bytes, sha: str, trust_code: bool, device: torch.device | str
) -> FeatureExtractor:
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    if any("/code/" in n for n in names):
        if not trust_code:
            raise UnsafePickleError(
                f"{file} is a TorchScript archive (it contains a program); "
                "pass trust_code=True to run it, or use "
                "the torch-fidelity weights (extractor 'inception-v3')"
            )
        return _wrap_detector(torch.jit.load(io.BytesIO(data), map_location=device), sha, device)
    return _from_state_dict(
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), sha, file, device
    )


def _from_state_dict(obj: object, sha: str, file: Path, device: torch.device | str) -> FeatureExtractor:
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MetricsError(f"{file} holds {type(obj).__name__}, not an Inception-V3 state dict")
    net = InceptionV3.from_state_dict(obj).to(device)
    return inception_extractor(net, "inception-v3-statedict-pickle", sha, device)


def _wrap_detector(net: torch.nn.Module, sha: str, device: torch.device | str) -> FeatureExtractor:
    net = net.to(device).eval()

    def fn(x: torch.Tensor, wanted: Sequence[str]) -> dict[str, torch.Tensor]:
        out = {}
        if "pool" in wanted:
            out["pool"] = net(x, return_features=True)
        if "probs" in wanted:
            out["probs"] = net(x, no_output_bias=True)
        return out

    return FeatureExtractor(
        name=EDM_NAME,
        fn=fn,
        dims={"pool": None, "probs": None},
        preprocessing="uint8 RGB -> the pickle's own resize to 299x299 (EDM/StyleGAN3 TorchScript detector)",
        weights_sha256=sha,
        metric_features={**{m: "pool" for m in INCEPTION_METRIC_FEATURES}, "is": "probs"},
        default_feature="pool",
        device=device,
        module=net,
    )
