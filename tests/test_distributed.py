"""Multi-process runs: torch.distributed (gloo, 2 CPU processes) gives the single-process results
(images bit for bit, statistics and FIDs to round-off).

The CLI tests start the real engine (``python -m torch.distributed.run``, i.e. torchrun) on the real
entry point. Single-process reference runs use one thread, as torchrun's workers do, so that the
same batches go through the same kernels.
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from skiptune.distributed import Dist, reduce_feature_set, shard_batches, shard_range
from skiptune.metrics import FeatureSet, FeatureStats, fid_from_stats

pytest.importorskip("sklearn")  # the shipped classifier's reference data (digits) come from scikit-learn

MODEL = "src/skiptune/assets/demo-digits.safetensors"


def _env(threads: int = 1) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def _cli(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "skiptune", *args], capture_output=True, text=True, timeout=timeout,
                       env=_env())
    assert r.returncode == 0, r.stderr
    return r


def _torchrun_cmd(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "skiptune", *args]


def _torchrun(*args, nproc=2, timeout=600):
    r = subprocess.run(_torchrun_cmd(*args, nproc=nproc), capture_output=True, text=True, timeout=timeout, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    return r


# -- sharding ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,batch,world", [(0, 4, 2), (1, 4, 2), (21, 4, 2), (21, 4, 3), (64, 8, 2), (9, 1, 4),
                                           (100, 7, 8), (5, 10, 3)])
def test_shards_cover_items_in_order_with_whole_batches(n, batch, world):
    items = list(range(1000, 1000 + n))
    parts = [shard_batches(items, batch, r, world) for r in range(world)]
    assert [x for p in parts for x in p] == items  # the union in rank order is the input, each item once
    whole = [items[i:i + batch] for i in range(0, n, batch)]  # the batches one process would form
    got = [p[i:i + batch] for p in parts for i in range(0, len(p), batch)]
    assert got == whole
    sizes = [-(-len(p) // batch) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shard_range_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank 2"):
        shard_range(10, 2, 2)
    with pytest.raises(ValueError, match="batch"):
        shard_batches([1, 2], 0, 0, 1)


def test_single_process_reduction_is_the_identity():
    fs = FeatureSet({"f": FeatureStats.from_features(np.ones((3, 2)))})
    assert reduce_feature_set(fs, Dist()) is fs


# -- feature statistics across two gloo processes (spawned here) -----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reduce_worker(rank, world, port, feats, keep, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from skiptune.distributed import close_distributed, init_distributed

    d = init_distributed("cpu")
    mine = shard_batches(list(range(len(feats))), 5, d.rank, d.world_size)
    st = FeatureStats(feats.shape[1], keep_features=keep)
    for i in range(0, len(mine), 5):  # batch by batch, as extraction does
        st.update(feats[mine[i:i + 5]])
    red = reduce_feature_set(FeatureSet({"f": st}, meta={"n": len(mine)}), d, meta={"n": len(feats)}).get("f")
    torch.save({"n": red.n, "mean": red.mean, "cov": red.cov,
                "features": red.features if keep else None}, f"{out}.{rank}")
    close_distributed()


@pytest.mark.parametrize("keep", [False, True])
def test_feature_statistics_reduced_over_two_processes_equal_one_process(tmp_path, keep):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(23, 6)) @ rng.normal(size=(6, 6)) + 3.0  # 23 = 3 + 2 batches of 5, uneven shares
    one = FeatureStats(6)
    for i in range(0, 23, 5):
        one.update(feats[i:i + 5])
    torch.multiprocessing.start_processes(_reduce_worker, args=(2, _free_port(), feats, keep, str(tmp_path / "r")),
                                          nprocs=2, start_method="spawn")
    for rank in range(2):
        got = torch.load(tmp_path / f"r.{rank}", weights_only=False)
        assert got["n"] == 23
        np.testing.assert_allclose(got["mean"], one.mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["cov"], one.cov, rtol=0, atol=1e-10)
        if keep:  # raw features come back in image order
            np.testing.assert_array_equal(got["features"], feats.astype(np.float32))
    ref = FeatureStats.from_features(rng.normal(size=(40, 6)))
    got0 = torch.load(tmp_path / "r.0", weights_only=False)
    dist_stats = FeatureStats(6)
    dist_stats._fixed = (got0["mean"], got0["cov"])
    assert abs(fid_from_stats(dist_stats, ref) - fid_from_stats(one, ref)) < 1e-10


# -- the commands under torchrun ------------------------------------------------------------------------------------

def test_torchrun_sample_and_eval_equal_single_process(tmp_path):
    common = ["--model", MODEL, "--seeds", "0-20", "--batch", "4", "--nfe", "5", "--rule", "layer:0.8",
              "--no-progress"]
    _cli("sample", *common, "--out", str(tmp_path / "one"))
    _torchrun("sample", *common, "--out", str(tmp_path / "two"))
    a, b = np.load(tmp_path / "one" / "images.npz"), np.load(tmp_path / "two" / "images.npz")
    np.testing.assert_array_equal(a["seeds"], np.arange(21))
    np.testing.assert_array_equal(b["seeds"], a["seeds"])
    np.testing.assert_array_equal(b["images"], a["images"])  # bit-identical images
    assert sorted(p.name for p in (tmp_path / "two" / "images").iterdir()) == [f"{i:06d}.png" for i in range(21)]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["config"]["processes"] == 2

    # FID (and KID, from gathered raw features) of the PNG folder against another image set
    _cli("sample", "--model", MODEL, "--seeds", "100-399", "--batch", "50", "--nfe", "3", "--no-progress",
         "--no-pngs", "--out", str(tmp_path / "ref"))
    ev = ["eval", "--images", str(tmp_path / "one" / "images"), "--ref", str(tmp_path / "ref" / "images.npz"),
          "--features", "digits-classifier", "--metrics", "fid,kid", "--batch", "4", "--kid-subset-size", "10",
          "--kid-subsets", "4", "--no-progress"]
    _cli(*ev, "--json", str(tmp_path / "e1.json"))
    _torchrun(*ev, "--json", str(tmp_path / "e2.json"))
    e1, e2 = (json.loads((tmp_path / f).read_text()) for f in ("e1.json", "e2.json"))
    assert e1["fid"]["value"] > 1.0  # two different image sets: a real distance, not a trivial zero
    # 21 images of 64-d features: a singular covariance, whose matrix square root magnifies the last-bit
    # differences of the float64 sums (added in another order); the statistics themselves are checked below
    assert abs(e1["fid"]["value"] - e2["fid"]["value"]) < 1e-6 * e1["fid"]["value"]
    assert (e2["fid"]["n"], e2["fid"]["n_ref"]) == (21, 300)
    assert abs(e1["kid"]["mean"] - e2["kid"]["mean"]) < 1e-9

    # reference statistics (mean, covariance, n) of 300 images: equal to 1e-10
    ref = ["ref", "--data", str(tmp_path / "ref" / "images.npz"), "--features", "digits-classifier", "--batch", "32",
           "--no-progress"]
    _cli(*ref, "--out", str(tmp_path / "s1.npz"))
    _torchrun(*ref, "--out", str(tmp_path / "s2.npz"))
    s1, s2 = FeatureSet.load(tmp_path / "s1.npz").get("features"), FeatureSet.load(tmp_path / "s2.npz").get("features")
    assert s1.n == s2.n == 300
    np.testing.assert_allclose(s2.mean, s1.mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(s2.cov, s1.cov, rtol=0, atol=1e-10)
    assert abs(fid_from_stats(s1, s2)) < 1e-10  # well-conditioned here: FID of the two is zero to round-off


def _complete_runs(db) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'complete'").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def test_torchrun_sweep_killed_midway_resumes_with_each_configuration_once(tmp_path, one_thread):
    from skiptune.demo.assets import classifier_extractor
    from skiptune.experiment import Scorer, load_reference
    from skiptune.io import load_model
    from skiptune.runs.sweep import SweepSpec, expand_rules, run_sweep, seed_sets
    from skiptune.store import Store

    rules, nfes, seeds, sets = "none;const:0.6;const:0.7;const:0.8;const:0.9", "3,5", "0-7", 2
    total = 5 * 2 * sets
    db = tmp_path / "dist.sqlite"
    args = ["sweep", "--model", MODEL, "--rules", rules, "--samplers", "heun", "--nfe", nfes, "--seeds", seeds,
            "--seed-sets", str(sets), "--ref", "digits", "--batch", "8", "--db", str(db), "--no-progress"]
    proc = subprocess.Popen(_torchrun_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while _complete_runs(db) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, at once
    finally:
        proc.wait()
    done_before = _complete_runs(db)
    assert 2 <= done_before < total, "the sweep was not interrupted midway"

    r = _torchrun(*args)
    assert "heun NFE 5: best" in r.stdout
    with Store(db, create=False) as store:
        runs = store.runs()
        assert store.counts()["complete"] == total and store.counts()["metrics"] == total
    assert len({r.key for r in runs}) == total and all(r.complete for r in runs)
    assert all(r.timings["world_size"] == 2 for r in runs)

    # the same numbers as one process computing every point itself
    ext = classifier_extractor()
    spec = SweepSpec(rules=expand_rules(rules), samplers=["heun"], nfes=[3, 5], seed_sets=seed_sets(seeds, sets),
                     batch=8)
    with Store(tmp_path / "one.sqlite") as one:
        rows = run_sweep(load_model(MODEL), spec, store=one, scorer=Scorer(ext, load_reference("digits", ext)),
                         progress=False)
        assert {r.key for r in one.runs()} == {r.key for r in runs}
    with Store(db, create=False) as store:
        dist_rows = {(r.config["nfe"], r.config["rule"], r.config["seeds"]): r.metrics["fid"].value
                     for r in store.runs()}
    with Store(tmp_path / "one.sqlite", create=False) as one:
        one_rows = {(r.config["nfe"], r.config["rule"], r.config["seeds"]): r.metrics["fid"].value
                    for r in one.runs()}
    # FIDs agree to round-off, as docs/distributed.md promises: float64 BLAS/LAPACK results may differ in the
    # last bits between processes (seen with MKL on AVX-512), far below any real difference between points
    assert dist_rows == pytest.approx(one_rows, rel=1e-12, abs=0)
    assert len(rows) == 10


def test_torchrun_reproduce_equals_single_process(tmp_path, one_thread):
    from edm_format import write_edm_pickle
    from skiptune.nets.presets import build_network, preset_config
    from skiptune.store import Store

    cls, kwargs = preset_config("ddpmpp-tiny")
    torch.manual_seed(0)
    write_edm_pickle(tmp_path / "net.pkl", build_network(cls, kwargs), kwargs)
    args = ["reproduce", "6", "--checkpoint", str(tmp_path / "net.pkl"), "--family", "edm-afhqv2-64", "--rows",
            "edm-afhqv2-64/unipc/9", "--no-sanity", "--ref", "digits", "--features", "digits-classifier",
            "--samples", "16", "--seed-sets", "2", "--batch", "8", "--no-progress"]
    r = _torchrun(*args, "--out", str(tmp_path / "two"))
    assert "edm-afhqv2-64/unipc/9" in r.stdout
    _cli(*args, "--out", str(tmp_path / "one"))
    fids = []
    for name in ("two", "one"):
        with Store(tmp_path / name / "results.sqlite", create=False) as store:
            fids.append({r.key: r.metrics["fid"].value for r in store.runs()})
    assert len(fids[0]) == 4 and set(fids[0]) == set(fids[1])  # untuned and tuned, 2 seed sets each
    assert fids[0] == pytest.approx(fids[1], rel=1e-12, abs=0)
    assert (tmp_path / "two" / "table6.md").read_text().count("edm-afhqv2-64/unipc/9") >= 1
