import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import stmcdi
from stmcdi import STMCDI


def base(n=30, g=6):
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(n // 6)), -1).reshape(-1, 2).astype(float)
    return ad.AnnData(rng.poisson(3, (n, g)).astype(np.float32), obsm={"spatial": grid})


@pytest.mark.parametrize(
    ("mutate", "exc", "match"),
    [
        (lambda a: a.X.__setitem__((0, 0), -1), ValueError, "negative"),
        (lambda a: a.X.__setitem__((0, 0), np.inf), ValueError, "infinite"),
        (lambda a: a.X.__setitem__((0, 0), 0.5), ValueError, "non-integer"),
        (lambda a: a.obsm.__setitem__("spatial", np.zeros((30, 4))), ValueError, "expected \\(n_obs, 2\\)"),
        (lambda a: a.obsm["spatial"].__setitem__((0, 0), np.nan), ValueError, "NaN or infinite"),
        (lambda a: a.obsm.pop("spatial"), KeyError, "coordinates are required"),
        (lambda a: a.X.__setitem__((slice(None), 2), np.nan), ValueError, "no observed entry"),
        (lambda a: a.obsm["spatial"].__setitem__(1, a.obsm["spatial"][0]), ValueError, "share coordinates"),
    ],
)
def test_bad_input_raises_before_training(mutate, exc, match):
    adata = base()
    mutate(adata)
    with pytest.raises(exc, match=match):
        STMCDI.setup_anndata(adata)


def test_missing_layer_view_and_too_few_spots():
    adata = base()
    with pytest.raises(KeyError, match="layers\\['counts'\\] not found"):
        STMCDI.setup_anndata(adata, layer="counts")
    with pytest.raises(ValueError, match="view"):
        STMCDI.setup_anndata(adata[:20])
    with pytest.raises(ValueError, match="cannot each have 5 neighbours"):
        STMCDI.setup_anndata(base()[:4].copy())


def test_stale_neighbour_table():
    adata = base()
    stmcdi.pp.spatial_graph(adata)
    sub = adata[6:].copy()
    with pytest.raises(ValueError, match="stale"):
        STMCDI.setup_anndata(sub)


def test_empty_spot_warns_and_mask_layer():
    adata = base()
    adata.X[3] = np.nan
    with pytest.warns(UserWarning, match="1 spots have no observed entry"):
        STMCDI.setup_anndata(adata)
    adata = base()
    adata.layers["missing"] = sp.csr_matrix(np.eye(30, 6, dtype=np.float32))
    STMCDI.setup_anndata(adata, mask_layer="missing")
    model = STMCDI(adata, n_channels=8, genes_per_token=2)
    assert model.adata_manager.get_from_registry("missing").shape == (30, 6)


def test_untrained_model_bad_samples_and_no_genes():
    adata = base()
    STMCDI.setup_anndata(adata)
    model = STMCDI(adata, n_channels=8, genes_per_token=2)
    with pytest.raises(ValueError, match="n_samples"):
        model.impute(n_samples=-1)
    with pytest.raises(ValueError, match="no fitted read-out"):
        model.impute(target="zeros")
    with pytest.raises(ValueError, match="at least 2 spots and 1 gene"):
        STMCDI.setup_anndata(base()[:, :0].copy())


def test_check_number_names_the_bounds_and_the_fix():
    from stmcdi._validation import check_number

    assert check_number(3, "k", integer=True, low=1) == 3
    for bad in (0, 2.5, True, float("nan"), "3"):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            check_number(bad, "k", integer=True, low=1)
    with pytest.raises(ValueError, match=r"in \(0, 1\], got 0.0. a hint"):
        check_number(0.0, "r", low=0, high=1, low_open=True, hint="a hint")


def test_copy_of_registered_data_with_stale_table_raises_before_imputing():
    # scvi-tools recognises a copy of the registered AnnData by its uuid and transfers the setup; a subset copy
    # still carries the parent's neighbour table, whose row ids point outside the subset
    adata = base(36)
    stmcdi.pp.spatial_graph(adata)
    STMCDI.setup_anndata(adata)
    model = STMCDI(adata, n_channels=8, n_latent=4)
    sub = adata[:12].copy()
    with pytest.raises(ValueError, match="stale"):
        model.impute(sub, target="zeros", readout="network", n_samples=1)
    stmcdi.pp.spatial_graph(sub)  # the fix the message names
    out = model.impute(sub, target="zeros", readout="network", n_samples=1, inplace=False)
    assert out["mean"].shape == sub.shape


def test_found_by_the_property_tests():
    import pandas as pd
    import scvi

    # all-zero held-back entries leave every stack weight at 0: the gene mean fills, no KeyError
    X = np.zeros((8, 1), dtype=np.float32)
    X[7, 0] = 3.0
    adata = ad.AnnData(X, obsm={"spatial": np.arange(16.0).reshape(8, 2)})
    scvi.settings.seed = 0
    STMCDI.setup_anndata(adata)
    model = STMCDI(adata, n_channels=8, n_latent=8, n_encoder_hidden=16, n_diffusion_steps=10)
    model.train(max_epochs=1, batch_size=16, enable_progress_bar=False, enable_model_summary=False)
    out = model.impute(target="zeros", n_samples=2, inplace=False)
    assert np.isfinite(out["mean"]).all()
    # an unused category of the section column is not a section
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"section": pd.Categorical(["a"] * 6 + ["b"] * 6, categories=["a", "b", "c"])},
                       index=[str(i) for i in range(12)])
    two = ad.AnnData(rng.poisson(3, (12, 4)).astype(np.float32), obs=obs, obsm={"spatial": rng.random((12, 2))})
    stmcdi.pp.spatial_graph(two, n_neighs=2, library_key="section")
    table = two.obsm["spatial_nn"]
    assert (table[:6, 1:] < 6).all() and (table[6:, 1:] >= 6).all()
    # five spots or fewer: the message names the call that fixes it
    with pytest.raises(ValueError, match=r"stmcdi.pp.spatial_graph\(adata, n_neighs=3\)"):
        STMCDI.setup_anndata(base()[:4].copy())
