from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from stmcdi.datasets import (
    DATA_DIR_ENV,
    _public,
    breast_cancer_layer2,
    cache_dir,
    dlpfc_151673,
    mouse_olfactory_bulb,
    read_st_count_table,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared beside the repo

TABLE = "\tGfap\tActb\tNrgn\n10.1x5.0\t3\t0\t1\n11.0x5.1\t0\t7\t2\n10.5x6.0\t4\t1\t0\n"


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No STMCDI_DATA_DIR, and the cache in a temporary directory."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _check_common_format(adata):
    assert sp.isspmatrix_csr(adata.X)
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.data, np.round(adata.X.data))
    coords = adata.obsm["spatial"]
    assert coords.dtype == np.float64 and coords.shape == (adata.n_obs, 2)
    assert np.isfinite(coords).all()
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    assert "total_counts" in adata.obs and "total_counts" in adata.var
    assert isinstance(adata.uns["provenance"], dict)


# ----------------------------------------------------------------------------- converter


def test_read_st_count_table_spots_as_rows():
    adata = read_st_count_table(io.StringIO(TABLE), sep="\t", provenance={"name": "tiny"})
    _check_common_format(adata)
    assert adata.shape == (3, 3)
    assert list(adata.obs_names) == ["10.1x5.0", "11.0x5.1", "10.5x6.0"]
    assert list(adata.var_names) == ["Gfap", "Actb", "Nrgn"]
    np.testing.assert_array_equal(adata.obsm["spatial"], [[10.1, 5.0], [11.0, 5.1], [10.5, 6.0]])
    np.testing.assert_array_equal(adata.X.toarray(), [[3, 0, 1], [0, 7, 2], [4, 1, 0]])
    np.testing.assert_array_equal(adata.obs["total_counts"], [4, 9, 5])
    np.testing.assert_array_equal(adata.var["total_counts"], [7, 8, 3])
    assert adata.uns["provenance"] == {"name": "tiny"}


def test_read_st_count_table_genes_as_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(",10x5,11x5\nGfap,1,2\nActb,0,3\n")
    adata = read_st_count_table(path)
    assert adata.shape == (2, 2)
    assert list(adata.var_names) == ["Gfap", "Actb"]
    np.testing.assert_array_equal(adata.X.toarray(), [[1, 0], [2, 3]])


@pytest.mark.parametrize(
    "text",
    [
        ",a,b\nfoo,1,2\nbar,3,4\n",  # no spot names
        ",Gfap\n1x1,1.5\n",  # fractional
        ",Gfap\n1x1,-1\n",  # negative
        ",Gfap\n1x1,\n",  # missing
        ",Gfap\n1x1,1\n1.0x1.0,2\n",  # duplicated coordinates
    ],
)
def test_read_st_count_table_rejects(text):
    with pytest.raises(ValueError):
        read_st_count_table(io.StringIO(text))


# ----------------------------------------------------------------------------- resolution and download


def _tiny_spec(tmp_path, monkeypatch, *, sha=True, size=True):
    table = tmp_path / "upstream" / "tiny.tsv"
    table.parent.mkdir()
    table.write_text(TABLE)
    spec = dataclasses.replace(
        _public.DATASETS["mouse_olfactory_bulb"],
        url=table.as_uri(),
        sep="\t",
        shape=(3, 3),
        url_sha256=hashlib.sha256(table.read_bytes()).hexdigest() if sha else "0" * 64,
        url_size=table.stat().st_size if size else None,
    )
    monkeypatch.setitem(_public.DATASETS, "mouse_olfactory_bulb", spec)
    return spec


def test_download_converts_and_caches(isolated, monkeypatch):
    spec = _tiny_spec(isolated, monkeypatch)
    assert spec.url.startswith("file://")
    adata = mouse_olfactory_bulb()
    _check_common_format(adata)
    assert adata.shape == (3, 3)
    assert adata.uns["provenance"]["source_repo"] == "Teichlab/SpatialDE"
    cached = cache_dir() / spec.filename
    assert cached == isolated / "cache" / "stmcdi" / spec.filename
    assert cached.is_file()
    assert not list(cached.parent.glob(".download-*"))
    # second call reads the cache: the upstream file is no longer needed
    Path(spec.url.removeprefix("file://")).unlink()
    again = mouse_olfactory_bulb()
    np.testing.assert_array_equal(again.X.toarray(), adata.X.toarray())


def test_download_checks_sha256(isolated, monkeypatch):
    spec = _tiny_spec(isolated, monkeypatch, sha=False)
    with pytest.raises(ValueError, match="sha256"):
        mouse_olfactory_bulb()
    assert not (cache_dir() / spec.filename).exists()
    assert not list(cache_dir().glob(".download-*"))


def test_download_rejects_lfs_pointer(isolated, monkeypatch):
    spec = _tiny_spec(isolated, monkeypatch, sha=False, size=False)
    Path(spec.url.removeprefix("file://")).write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 10\n"
    )
    with pytest.raises(ValueError, match="LFS"):
        mouse_olfactory_bulb()


def test_download_failure_explains(isolated, monkeypatch):
    spec = _tiny_spec(isolated, monkeypatch)
    monkeypatch.setitem(
        _public.DATASETS, "mouse_olfactory_bulb", dataclasses.replace(spec, url=(isolated / "nope.tsv").as_uri())
    )
    with pytest.raises(ConnectionError, match=DATA_DIR_ENV):
        mouse_olfactory_bulb()


def test_no_download(isolated, monkeypatch):
    _tiny_spec(isolated, monkeypatch)
    with pytest.raises(FileNotFoundError, match="switched off"):
        mouse_olfactory_bulb(download=False)


def test_resolution_order(isolated, monkeypatch):
    spec = _tiny_spec(isolated, monkeypatch)
    base = read_st_count_table(io.StringIO(TABLE), sep="\t")
    env_dir = isolated / "env"
    env_dir.mkdir()
    env_file = env_dir / spec.filename
    base.uns["provenance"] = {"name": "env"}
    base.write_h5ad(env_file)
    explicit = isolated / "explicit.h5ad"
    base.uns["provenance"] = {"name": "explicit"}
    base.write_h5ad(explicit)
    cache_dir().mkdir(parents=True)
    base.uns["provenance"] = {"name": "cache"}
    base.write_h5ad(cache_dir() / spec.filename)

    monkeypatch.setenv(DATA_DIR_ENV, str(env_dir))
    assert mouse_olfactory_bulb(explicit).uns["provenance"]["name"] == "explicit"
    assert mouse_olfactory_bulb(env_dir).uns["provenance"]["name"] == "env"  # directory form
    assert mouse_olfactory_bulb().uns["provenance"]["name"] == "env"
    monkeypatch.delenv(DATA_DIR_ENV)
    assert mouse_olfactory_bulb().uns["provenance"]["name"] == "cache"
    with pytest.raises(FileNotFoundError, match="path="):
        mouse_olfactory_bulb(isolated / "missing.h5ad")


def test_dlpfc_not_downloadable(isolated):
    with pytest.raises(FileNotFoundError, match="STMCDI_DATA_DIR"):
        dlpfc_151673()


def test_default_urls_point_at_spatialde_lfs():
    for key, path in [
        ("mouse_olfactory_bulb", "Analysis/MouseOB/data/Rep11_MOB_0.csv"),
        ("breast_cancer_layer2", "Analysis/BreastCancer/data/Layer2_BC_count_matrix-1.tsv"),
    ]:
        spec = _public.DATASETS[key]
        assert spec.url.startswith("https://media.githubusercontent.com/media/Teichlab/SpatialDE/")
        assert spec.url.endswith(path)
        assert len(spec.url_sha256) == 64


# ----------------------------------------------------------------------------- the real files

REAL = [
    (mouse_olfactory_bulb, "stahl2016_mob_rep11.h5ad", (262, 16218)),
    (breast_cancer_layer2, "stahl2016_breast_cancer_layer2.h5ad", (251, 14789)),
    (dlpfc_151673, "maynard2021_dlpfc_151673_hvg5000.h5ad", (3639, 5000)),
]


@pytest.mark.parametrize(("loader", "filename", "shape"), REAL, ids=[r[1] for r in REAL])
def test_real_files(loader, filename, shape, isolated):
    if not (SHARED / filename).is_file():
        pytest.skip(f"{SHARED / filename} is not available on this machine (the shared data release).")
    adata = loader(SHARED)
    assert adata.shape == shape
    _check_common_format(adata)
    assert adata.obsm["spatial"].shape == (shape[0], 2)
    assert len(np.unique(adata.obsm["spatial"], axis=0)) == shape[0]
    if filename.startswith("stahl"):
        coords = np.array([[float(v) for v in n.split("x")] for n in adata.obs_names])
        np.testing.assert_allclose(adata.obsm["spatial"], coords)
    else:
        assert "layer" in adata.obs


@pytest.mark.parametrize("key", list(_public.DATASETS))
def test_real_files_sha256(key):
    spec = _public.DATASETS[key]
    path = SHARED / spec.filename
    if not path.is_file():
        pytest.skip(f"{path} is not available on this machine (the shared data release).")
    assert spec.sha256 is not None
    assert _public._sha256(path) == spec.sha256
