import sys
import types

import numpy as np
import pytest

import stmcdi
from stmcdi.benchmark import EXTRAS, available_extras, hold_out, magic, scvi_impute, stagate


@pytest.fixture
def held():
    return hold_out(stmcdi.datasets.synthetic(n_spots=60, n_genes=12, seed=5), "entries", 0.2, seed=0)


def _check(held, pred):
    dense = held.adata.X.toarray() if hasattr(held.adata.X, "toarray") else np.asarray(held.adata.X)
    x, _, _ = stmcdi.pp.log_normalize(dense)
    obs = ~np.isnan(x)
    assert pred.shape == held.adata.shape and np.isfinite(pred).all() and (pred >= 0).all()
    np.testing.assert_allclose(pred[obs], x[obs], rtol=1e-5)  # observed entries are kept
    assert np.isfinite(stmcdi.benchmark.score(held, pred, min_entries=3)["rmse"])


def test_scvi_wrapper_fills_missing_entries(held):
    pred = scvi_impute(held.adata, seed=0, max_epochs=2)
    _check(held, pred)
    assert "scvi" in available_extras()


def test_scvi_wrapper_fills_zeros_for_thin():
    held = hold_out(stmcdi.datasets.synthetic(n_spots=60, n_genes=12, seed=5), "thin", 0.5, seed=0)
    pred = scvi_impute(held.adata, seed=0, max_epochs=2, target="zeros")
    zeros = held.adata.X.toarray() == 0
    assert (pred[zeros] > 0).all()


def test_magic_wrapper(held):
    pytest.importorskip("magic", reason="magic-impute is an optional extra (pip install 'stmcdi[benchmark]')")
    _check(held, magic(held.adata, seed=0))


def test_missing_packages_give_an_install_hint(held, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("magic", "STAGATE_pyG")
                        else real(name, *a))
    with pytest.raises(ImportError, match="pip install magic-impute"):
        magic(held.adata)
    with pytest.raises(ImportError, match="STAGATE_pyG"):
        stagate(held.adata)
    assert set(available_extras()) == {"scvi"}
    assert set(EXTRAS) == {"magic", "scvi", "stagate"}


def test_stagate_wrapper_plumbing_with_a_stand_in_package(held, monkeypatch):
    # STAGATE_pyG is not on PyPI and cannot be installed here; this stand-in follows its API
    # (Cal_Spatial_Net, train_STAGATE(save_reconstrction=True) -> layers["STAGATE_ReX"]) and records the calls.
    calls = {}
    fake = types.ModuleType("STAGATE_pyG")

    def cal_spatial_net(adata, k_cutoff=None, model="Radius", verbose=True):
        calls["net"] = (k_cutoff, model, adata.obsm["spatial"].shape)
        adata.uns["Spatial_Net"] = "net"

    def train_stagate(adata, n_epochs=1000, random_seed=0, save_reconstrction=False, verbose=True):
        assert "Spatial_Net" in adata.uns and save_reconstrction
        calls["input_finite"] = bool(np.isfinite(np.asarray(adata.X)).all())
        adata.layers["STAGATE_ReX"] = np.full(adata.shape, 7.0, dtype=np.float32)
        return adata

    fake.Cal_Spatial_Net, fake.train_STAGATE = cal_spatial_net, train_stagate
    fake.__spec__ = types.SimpleNamespace(name="STAGATE_pyG")
    monkeypatch.setitem(sys.modules, "STAGATE_pyG", fake)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake.__spec__ if name == "STAGATE_pyG"
                        else real(name, *a))
    pred = stagate(held.adata, n_epochs=3)
    assert calls["net"] == (6, "KNN", (60, 2)) and calls["input_finite"]
    miss = held.mask.toarray()
    assert (pred[miss] == 7.0).all()
    _check(held, pred)
