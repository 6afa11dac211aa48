"""Splits: held-out test set, folds stratified by material, and all folds on a dask cluster."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from vstain_dask.errors import InputError
from vstain_dask.models import load_model
from vstain_dask.models.config import DiscriminatorConfig, GeneratorConfig
from vstain_dask.train import FoldCallbacks, TrainConfig, make_split, train_folds
from vstain_dask.train._testing import write_toy_pairs

torch.set_num_threads(1)


def _pairs(counts=None, per_sample=2, roles=None):
    """Pairs in the paper's 7:1:2 mix: 14 Mg, 2 Ti and 4 PEEK samples of two pairs each."""
    counts = counts or {"mg": 14, "ti": 2, "peek": 4}
    out = []
    for m, n in counts.items():
        for s in range(n):
            for k in range(per_sample):
                pid = f"{m}{s:02d}-{k}"
                out.append({"id": pid, "material": m, "sample": f"{m}-{s:02d}",
                            "role": (roles or {}).get(pid)})  # fmt: skip
    return out


def _materials(pairs, ids):
    by_id = {p["id"]: p["material"] for p in pairs}
    return Counter(by_id[i] for i in ids)


def _samples(pairs, ids):
    by_id = {p["id"]: p["sample"] for p in pairs}
    return {by_id[i] for i in ids}


def test_folds_are_stratified_and_keep_the_test_set_out():
    pairs = _pairs()
    splits = [make_split(pairs, folds=5, fold=k, seed=3) for k in range(5)]
    test = set(splits[0].test)
    # 20 samples, 20 % held out: 4 samples (8 pairs), shared by largest remainder
    assert _materials(pairs, test) == {"mg": 6, "peek": 2}
    for s in splits:
        assert set(s.test) == test  # the same test set for every fold
        assert not (set(s.train) | set(s.val)) & test
        assert set(s.train) | set(s.val) | test == {p["id"] for p in pairs}
        assert not set(s.train) & set(s.val)
        # sections of one sample stay together
        assert not _samples(pairs, s.train) & _samples(pairs, s.val)
        assert not _samples(pairs, s.val) & _samples(pairs, test)
    vals = [set(s.val) for s in splits]
    assert set().union(*vals) == {p["id"] for p in pairs} - test  # every sample validates once
    assert sum(len(v) for v in vals) == len(set().union(*vals))
    # 16 samples over 5 folds: 3 or 4 samples each; 11 Mg samples spread 2-3 per fold
    sizes = sorted(len(_samples(pairs, v)) for v in vals)
    assert sizes[-1] - sizes[0] <= 1
    mg = [_materials(pairs, v)["mg"] // 2 for v in vals]
    assert max(mg) - min(mg) <= 1
    assert sum(_materials(pairs, v)["ti"] for v in vals) == 4  # both Ti samples in some fold


def test_split_is_seeded_and_honours_roles():
    pairs = _pairs()
    a, b = make_split(pairs, folds=5, fold=0, seed=1), make_split(pairs, folds=5, fold=0, seed=1)
    assert a == b
    assert make_split(pairs, folds=5, fold=0, seed=2).test != a.test
    roles = {"ti00-0": "test", "ti00-1": "test", "mg03-0": "val", "mg03-1": "val"}
    pairs = _pairs(roles=roles)
    s = make_split(pairs, folds=5, fold=2)
    assert set(s.test) == {"ti00-0", "ti00-1"}  # given test roles replace the drawn test set
    plain = make_split(pairs)  # no folds: the roles decide
    assert set(plain.val) == {"mg03-0", "mg03-1"} and set(plain.test) == {"ti00-0", "ti00-1"}
    assert len(plain.train) == 40 - 4
    assert plain.to_dict()["stratify"] == "material" and plain.fold is None
    # a material's last sample is never drawn for testing
    small = _pairs({"mg": 3, "ti": 1, "peek": 1})
    s = make_split(small, folds=2, fold=0, test_fraction=0.4)
    assert _materials(small, s.test)["ti"] == 0 and _materials(small, s.test)["peek"] == 0


def test_split_errors():
    pairs = _pairs({"mg": 3, "ti": 1, "peek": 1})
    with pytest.raises(InputError, match=r"fold must be in 0\.\.4 \(0-based\), got 5"):
        make_split(pairs, folds=5, fold=5)
    with pytest.raises(InputError, match="fold must be an integer in 0..2"):
        make_split(pairs, folds=3)
    with pytest.raises(InputError, match="folds=5 needs at least 5 samples outside the test set"):
        make_split(pairs, folds=5, fold=0)
    with pytest.raises(InputError, match="test_fraction must be in"):
        make_split(pairs, test_fraction=1.0)
    with pytest.raises(InputError, match="needs folds > 1"):
        make_split(pairs, fold=2)


@pytest.mark.slow
def test_all_folds_run_in_parallel_on_a_cluster(tmp_path, client):
    pairs = write_toy_pairs(tmp_path / "toy.zarr", n=4, size=(40, 40))
    cfg = TrainConfig(epochs=1, patch_size=32, patches_per_pair=2, batch_size=4, workers=2,
                      generator=GeneratorConfig(ngf=4, n_blocks=1),
                      discriminator=DiscriminatorConfig(ndf=4, n_layers=2), device="cpu",
                      folds=2, test_fraction=0.0, val_every=1)  # fmt: skip
    done = []
    results = train_folds(pairs, tmp_path / "cv", cfg, cluster=client,
                          callbacks=FoldCallbacks(on_done=done.append))  # fmt: skip
    assert [r.split["fold"] for r in results] == [0, 1] and len(done) == 2
    vals = [set(r.split["val"]) for r in results]
    assert not vals[0] & vals[1] and vals[0] | vals[1] == {"toy00", "toy01", "toy02", "toy03"}
    for k, r in enumerate(results):
        assert r.run_dir == (tmp_path / "cv" / f"fold{k}").resolve()
        m = load_model(r.model)
        assert m.card["split"]["fold"] == k and m.card["split"]["folds"] == 2
        assert "val_ssim" in r.history[-1]
