"""Property-based tests (hypothesis): ``setup_anndata`` -> ``train`` -> ``impute`` over small random AnnData.

For every draw the pipeline either

- raises a ``ValueError`` / ``TypeError`` (``KeyError`` for a missing key) raised by stmcdi itself, whose message
  is more than a bare numpy / torch message (and, where the draw has a defect the documentation names, the error
  that names that defect), or
- writes finite values of the input's shape with every observed entry equal to its log-normalised value
  (:func:`stmcdi.pp.log_normalize` with the model's target sum, i.e. :func:`stmcdi.pp.normalize`).

In both cases the input AnnData is unchanged outside the documented keys.

The draws cover dense / CSR / CSC counts; float32 / float64 / integer dtypes; NaN (or ``mask_layer``) patterns:
none, scattered, whole genes, whole spots; all-zero genes and spots; duplicated, collinear, gridded and integer
coordinates in 2-D and 3-D; a categorical section column with sections of unequal size (and an unused
category); few spots (<= 6) with many genes; counts in ``X`` or in a layer; AnnData views and subset copies that
carry a stale neighbour table; data normalised by ``stmcdi.pp.normalize`` beforehand.

The run is bounded and reproducible (``derandomize=True``, no example database): 200 examples, about 50 s with
``OMP_NUM_THREADS=1`` when the property holds, about 2 min 15 s when it fails (hypothesis stops drawing at the
first failures and shrinks them). ``STMCDI_HYPOTHESIS_EXAMPLES`` overrides the number of examples. The examples
drawn and their outcomes are counted in ``EXAMPLES`` / ``OUTCOMES``, printed (``-s``) and checked by the last test;
``--hypothesis-show-statistics`` shows the same outcomes as hypothesis events.
"""

from __future__ import annotations

import copy
import logging
import os
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import spatialdata._logging  # noqa: F401 - squidpy's logger; it sets its own level when first imported
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import stmcdi
from stmcdi import STMCDI

# as tests/conftest.py does, and squidpy's (spatialdata's) "Creating graph ..." lines
for _name in ("lightning.pytorch", "lightning.fabric", "scvi", "spatialdata._logging", "stmcdi"):
    logging.getLogger(_name).setLevel(logging.WARNING)

SMALL = {"n_channels": 8, "n_latent": 8, "n_encoder_hidden": 16, "n_diffusion_steps": 10}
TRAIN = {"max_epochs": 1, "batch_size": 16, "enable_progress_bar": False, "enable_model_summary": False}
N_SAMPLES = 2

#: examples drawn by each property test, and the outcomes (checked and printed by the last test)
EXAMPLES: Counter = Counter()
OUTCOMES: Counter = Counter()
FAILURES: Counter = Counter()

#: keys the pipeline may add (everything else must be left as it was)
ADDED_LAYERS = {"imputed", "imputed_std"}
ADDED_OBSM = {"spatial_nn"}
ADDED_OBSP = {"spatial_connectivities", "spatial_distances"}
ADDED_UNS = {"stmcdi", "spatial_neighbors", "_scvi_uuid", "_scvi_manager_uuid"}
ADDED_UNS_STMCDI = {"spatial_graph", "impute"}

SRC = os.path.dirname(os.path.abspath(stmcdi.__file__))

PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("STMCDI_HYPOTHESIS_EXAMPLES", 200)),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
)


# --------------------------------------------------------------------------------------------------- the draw
@dataclass
class Case:
    """A drawn AnnData, how to call the pipeline on it, and the defects the pipeline must refuse."""

    subject: ad.AnnData  # what the pipeline is called on (may be a view)
    base: ad.AnnData  # what must stay unchanged (the view's parent, else the subject)
    layer: str | None
    mask_layer: str | None
    graph: dict | None  # kwargs of a stmcdi.pp.spatial_graph call before setup_anndata; None: setup builds it
    targets: list  # [(target, inplace), ...]
    expect: dict = field(default_factory=dict)  # defect -> words its message must contain (one of them)
    expect_fill: dict = field(default_factory=dict)  # target -> whether there is anything to fill
    description: str = ""


def _indices(draw, n: int, max_size: int) -> list[int]:
    if n == 0:
        return []
    return sorted(set(draw(st.lists(st.integers(0, n - 1), max_size=max_size))))


@st.composite
def cases(draw) -> Case:
    few = draw(st.sampled_from([False, False, True]))  # "few spots, many genes" one time in three
    if few:
        n_obs, n_vars = draw(st.integers(1, 6)), draw(st.integers(1, 60))
    else:
        n_obs, n_vars = draw(st.integers(7, 40)), draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    # ---- counts
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "int32", "uint16"]))
    fmt = draw(st.sampled_from(["dense", "csr", "csc", "csr+explicit zeros"]))
    rate = draw(st.sampled_from([0.05, 0.5, 3.0, 40.0, 5000.0]))
    counts = rng.poisson(rate * rng.gamma(1.0, 1.0, size=(1, n_vars)), size=(n_obs, n_vars)).astype(np.float64)
    counts = np.minimum(counts, 60_000)  # fits every dtype drawn (uint16 included)
    zero_genes = _indices(draw, n_vars, 3)
    zero_spots = _indices(draw, n_obs, 3)
    counts[:, zero_genes] = 0
    counts[zero_spots, :] = 0

    # ---- missing entries: NaN in float counts, a mask layer (always for integer counts), or both
    missing = np.zeros((n_obs, n_vars), dtype=bool)
    scattered = draw(st.sampled_from([0.0, 0.0, 0.05, 0.2, 0.6]))
    missing |= rng.random((n_obs, n_vars)) < scattered
    if draw(st.integers(0, 4)) == 0:  # whole genes (a defect setup_anndata must refuse)
        missing[:, _indices(draw, n_vars, 2)] = True
    if draw(st.integers(0, 2)) == 0:  # whole spots (imputed from their neighbours)
        missing[_indices(draw, n_obs, 2), :] = True
    floating = dtype.startswith("float")
    via = draw(st.sampled_from(["nan", "nan", "mask", "both"])) if floating else "mask"
    if via == "nan":
        nan_part = missing
    elif via == "mask":
        nan_part = np.zeros_like(missing)
    else:
        nan_part = missing & (rng.random(missing.shape) < 0.5)
    mask_part = missing & ~nan_part
    use_mask = via != "nan"
    values = np.where(nan_part, np.nan, counts)
    values = values.astype(dtype) if floating else counts.astype(dtype)
    if fmt == "dense":
        X = values
    elif fmt == "csc":
        X = sp.csc_matrix(values)
    else:
        X = sp.csr_matrix(values)
        if fmt == "csr+explicit zeros":  # zeros stored explicitly, as some readers leave them
            X = sp.csr_matrix((np.asarray(values).ravel(), np.tile(np.arange(n_vars), n_obs),
                               np.arange(0, n_obs * n_vars + 1, n_vars)), shape=(n_obs, n_vars))
    mask_fmt = draw(st.sampled_from(["bool", "int8", "csr"]))

    # ---- coordinates
    dim = draw(st.sampled_from([2, 3]))
    layout = draw(st.sampled_from(["random", "grid", "collinear"]))
    if layout == "random":
        coords = rng.random((n_obs, dim)) * 100
    elif layout == "grid":
        side = max(1, int(np.ceil(n_obs ** (1 / dim))))
        grid = np.stack(np.meshgrid(*[np.arange(side)] * dim, indexing="ij"), -1).reshape(-1, dim)
        coords = grid[rng.permutation(len(grid))[:n_obs]].astype(np.float64) * 100
    else:
        coords = np.outer(rng.permutation(n_obs), np.arange(1, dim + 1)).astype(np.float64)
    if draw(st.integers(0, 3)) == 0:  # duplicated positions
        for i, j in draw(st.lists(st.tuples(st.integers(0, n_obs - 1), st.integers(0, n_obs - 1)), max_size=2)):
            coords[j] = coords[i]
    coords = coords.astype(draw(st.sampled_from(["float64", "float32", "int64"])))

    # ---- sections: a categorical column with sections of unequal size (and maybe an unused category)
    n_sections = draw(st.sampled_from([1, 1, 2, 3]))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, n_obs - 1)), min_size=n_sections - 1,
                                max_size=n_sections - 1)))
    section = np.searchsorted(np.asarray(cuts), np.arange(n_obs), side="right")
    categories = [f"s{i}" for i in range(n_sections)] + (["unused"] if draw(st.booleans()) else [])
    obs = pd.DataFrame({
        "section": pd.Categorical.from_codes(section, categories=categories),
        "cell_type": pd.Categorical(rng.choice(["a", "b"], n_obs)),
        "depth": rng.random(n_obs),
    }, index=[f"spot{i}" for i in range(n_obs)])
    var = pd.DataFrame({"gene_id": [f"ENSG{i:05d}" for i in range(n_vars)]},
                       index=[f"gene{i}" for i in range(n_vars)])

    where = draw(st.sampled_from(["X", "X", "layer", "layer, X=None"]))
    layers, layer = {}, None
    if where != "X":
        layer, layers["counts"] = "counts", X
        # a processed X beside the counts, or none
        X = None if where == "layer, X=None" else np.log1p(np.nan_to_num(counts)).astype(np.float32)
    mask_layer = None
    if use_mask:
        mask_layer = "missing"
        layers[mask_layer] = (mask_part if mask_fmt == "bool" else mask_part.astype(np.int8) if mask_fmt == "int8"
                              else sp.csr_matrix(mask_part))
    base = ad.AnnData(X=X, obs=obs, var=var, layers=layers, obsm={"spatial": coords},
                      uns={"user": {"note": "keep me", "values": np.arange(3)}})
    if draw(st.booleans()):  # the user normalised beforehand (writes layers["lognorm"], uns["stmcdi"])
        stmcdi.pp.normalize(base, layer=layer, mask_layer=mask_layer)

    # ---- views and stale subsets
    mode = draw(st.sampled_from(["plain"] * 6 + ["view", "stale"]))
    subject, rows = base, np.arange(n_obs)
    cols = np.arange(n_vars)
    if mode == "view":
        rows = np.asarray(draw(st.lists(st.integers(0, n_obs - 1), min_size=1, max_size=n_obs, unique=True)))
        if draw(st.booleans()):  # a gene subset too
            cols = np.asarray(draw(st.lists(st.integers(0, n_vars - 1), min_size=1, max_size=n_vars, unique=True)))
        subject = base[rows, cols]
    elif mode == "stale" and n_obs >= 2:
        # a subset copy of data whose neighbour table was built before subsetting
        stmcdi.pp.spatial_graph(base, n_neighs=min(5, n_obs - 1), allow_duplicates=True)
        rows = np.asarray(draw(st.lists(st.integers(0, n_obs - 1), min_size=1, max_size=n_obs, unique=True)))
        subject = base[rows].copy()
        base = subject
    else:
        mode = "plain"

    # ---- the graph: built by setup_anndata (5 neighbours) or by the user (k, library_key, allow_duplicates)
    graph = None
    if draw(st.booleans()):
        graph = {"n_neighs": draw(st.integers(1, 5)), "allow_duplicates": draw(st.booleans())}
        if n_sections > 1 and draw(st.booleans()):
            graph["library_key"] = "section"

    order = draw(st.sampled_from([("missing", "zeros"), ("zeros", "missing")]))
    targets = [(t, draw(st.booleans())) for t in order]

    # ---- defects the pipeline must refuse, with words the refusal must contain
    expect = {}
    sub_missing, sub_counts = missing[np.ix_(rows, cols)], counts[np.ix_(rows, cols)]
    sub_coords = np.asarray(coords, dtype=np.float64)[rows]
    sub_section = section[rows]
    n = len(rows)
    if mode == "view":
        expect["view"] = ("view",)
    if graph is None and n < 2:
        expect["shape"] = ("at least 2 spots",)
    if (sub_missing.all(axis=0)).any():
        expect["gene without observed entry"] = ("no observed entry",)
    if mode == "stale" and graph is None:
        table = np.asarray(subject.obsm["spatial_nn"])
        if not (np.array_equal(table[:, 0], np.arange(n)) and table.max() < n):
            expect["stale table"] = ("stale",)
    if mode != "stale" or graph is not None:  # stale: setup checks the existing table and builds nothing
        k = 5 if graph is None else graph["n_neighs"]
        by_section = graph is not None and "library_key" in graph
        groups = sub_section if by_section else np.zeros(n, dtype=int)
        sizes = np.bincount(groups)
        sizes = sizes[sizes > 0]
        if sizes.min() <= k:
            expect["too few spots for the neighbours"] = ("neighbours",)
        if not (graph is not None and graph["allow_duplicates"]):
            key = np.concatenate([groups[:, None].astype(np.float64), sub_coords], axis=1)
            if len(np.unique(key, axis=0)) < n:
                expect["duplicated coordinates"] = ("share coordinates",)
    observed = ~sub_missing
    fill_missing, fill_zeros = sub_missing.any(), (sub_missing | (observed & (sub_counts == 0))).any()
    expect_fill = {"missing": fill_missing, "zeros": fill_zeros}

    description = (f"{n_obs}x{n_vars} {dtype} {fmt}, rate={rate}, zero genes={zero_genes}, zero spots={zero_spots}, "
                   f"missing via {via} ({int(missing.sum())} entries), counts in {where}, coords {dim}-D {layout} "
                   f"{coords.dtype}, sections={n_sections} {categories}, mode={mode}, graph={graph}, "
                   f"targets={targets}")
    case = Case(subject=subject, base=base, layer=layer, mask_layer=mask_layer, graph=graph, targets=targets,
                expect=expect, expect_fill=expect_fill, description=description)
    return case


# --------------------------------------------------------------------------------------------------- checks
def snapshot(adata: ad.AnnData) -> dict:
    return {
        "shape": adata.shape,
        "X": copy.deepcopy(adata.X),
        "layers": {k: copy.deepcopy(v) for k, v in adata.layers.items()},
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "obsm": {k: copy.deepcopy(v) for k, v in adata.obsm.items()},
        "obsp": {k: copy.deepcopy(v) for k, v in adata.obsp.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
    }


def assert_same(a, b, where: str) -> None:
    """Deep equality: type, dtype, shape, format and values (NaN equal to NaN)."""
    if isinstance(a, pd.DataFrame):
        assert isinstance(b, pd.DataFrame), where
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=where)
    elif sp.issparse(a):
        assert sp.issparse(b) and a.format == b.format, f"{where}: {type(a)} became {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} -> {b.dtype}{b.shape}"
        # the stored structure too (explicit zeros and NaN, index order): an in-place tidy-up is a change
        for part in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(a, part), getattr(b, part), err_msg=f"{where}.{part}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{where}: {type(a)} became {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} -> {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a)} -> {set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} -> {b!r}"


#: keys that a call of stmcdi.pp.spatial_graph (re)writes, as documented
GRAPH_KEYS = {"obsm": {"spatial_nn"}, "obsp": ADDED_OBSP, "uns": {"spatial_neighbors"}}


def assert_unchanged(before: dict, adata: ad.AnnData, rebuilt: bool = False) -> None:
    """The AnnData holds what it held before; only the documented keys were added.

    ``rebuilt``: the user called :func:`stmcdi.pp.spatial_graph`, which may replace an earlier graph.
    """
    after = snapshot(adata)
    assert after["shape"] == before["shape"]
    assert_same(before["X"], after["X"], "X")
    assert_same(before["obs"], after["obs"], "obs")
    assert_same(before["var"], after["var"], "var")
    for slot, allowed in (("layers", ADDED_LAYERS), ("obsm", ADDED_OBSM), ("obsp", ADDED_OBSP), ("uns", ADDED_UNS)):
        added = set(after[slot]) - set(before[slot])
        assert added <= allowed, f"{slot} gained undocumented keys {added - allowed}"
        for k in before[slot]:
            assert k in after[slot], f"{slot}[{k!r}] was removed"
            if (slot == "uns" and k == "stmcdi") or (rebuilt and k in GRAPH_KEYS.get(slot, ())):
                continue
            assert_same(before[slot][k], after[slot][k], f"{slot}[{k!r}]")
    old, new = before["uns"].get("stmcdi", {}), after["uns"].get("stmcdi", {})
    assert isinstance(new, dict)
    assert set(new) - set(old) <= ADDED_UNS_STMCDI, f"uns['stmcdi'] gained {set(new) - set(old)}"
    for k in old:
        assert k in new, f"uns['stmcdi'][{k!r}] was removed"
        if k != "impute" and not (rebuilt and k == "spatial_graph"):
            assert_same(old[k], new[k], f"uns['stmcdi'][{k!r}]")


def assert_good_error(exc: BaseException, case: Case) -> str:
    """A refusal: the right type, raised by stmcdi, with a message that names the problem (and the fix)."""
    assert isinstance(exc, (ValueError, TypeError, KeyError)), (
        f"{type(exc).__name__} is not a refusal: {exc!r}\n{''.join(traceback.format_exception(exc))}")
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    origin = frames[-1].filename if frames else "?"
    assert origin.startswith(SRC), (
        f"{type(exc).__name__} raised outside stmcdi ({origin}:{frames[-1].lineno}): {message!r}\n"
        f"{''.join(traceback.format_exception(exc))}")
    assert len(message) > 30, f"message too short to name the problem and the fix: {message!r}"
    if case.graph is None and "n_neighs" in message:
        # setup_anndata has no n_neighs: the fix must say where it goes
        assert "spatial_graph" in message, (
            f"setup_anndata's refusal names `n_neighs`, which setup_anndata does not take: {message!r}")
    if case.expect:
        words = [w for ws in case.expect.values() for w in ws]
        assert any(w.lower() in message.lower() for w in words), (
            f"the draw has defects {sorted(case.expect)}, but the error names none of them: {message!r}")
    return message


def check_imputation(model, case: Case, adata: ad.AnnData, target: str, inplace: bool) -> None:
    """Finite values of the input's shape; observed entries equal to their log-normalised values."""
    before_layer = adata.layers["imputed"].copy() if "imputed" in adata.layers else None
    out = model.impute(target=target, n_samples=N_SAMPLES, inplace=inplace)
    if inplace:
        assert out is None
        mean, std = adata.layers["imputed"], adata.layers["imputed_std"]
        record = adata.uns["stmcdi"]["impute"]
        assert record["target"] == target and record["n_samples"] == N_SAMPLES
    else:
        assert set(out) == {"mean", "std", "genes"}, set(out)
        mean, std = out["mean"], out["std"]
        np.testing.assert_array_equal(out["genes"], np.asarray(adata.var_names))
        if before_layer is None:
            assert "imputed" not in adata.layers, "impute(inplace=False) wrote layers['imputed']"
        else:
            np.testing.assert_array_equal(adata.layers["imputed"], before_layer)
    for name, arr in (("mean", mean), ("std", std)):
        assert isinstance(arr, np.ndarray) and arr.shape == adata.shape, f"{name}: {type(arr)} {np.shape(arr)}"
        assert arr.dtype == np.float32, f"{name}: {arr.dtype}"
        assert np.isfinite(arr).all(), f"{name} has {int((~np.isfinite(arr)).sum())} non-finite values"
    assert (std >= 0).all()

    counts = stmcdi._validation.get_layer(adata, case.layer)
    mask = adata.layers[case.mask_layer] if case.mask_layer else None
    missing = stmcdi._validation.missing_mask(counts, mask)
    x, _, _ = stmcdi.pp.log_normalize(counts, missing, target_sum=float(model.module.target_sum))
    reference = stmcdi.pp.normalize(adata, layer=case.layer, mask_layer=case.mask_layer, copy=True)
    np.testing.assert_array_equal(x, reference)  # the model's target sum is the data's median library
    fill = np.isnan(x) | ((x == 0) if target == "zeros" else False)
    keep = ~fill
    np.testing.assert_array_equal(mean[keep], x[keep], err_msg="observed entries changed")
    if inplace:
        assert adata.uns["stmcdi"]["impute"]["n_filled"] == int(fill.sum())


def run_pipeline(case: Case) -> str:
    """setup_anndata -> train -> impute (each target of the draw); the outcome, for the statistics."""
    import scvi

    adata = case.subject
    scvi.settings.seed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case.graph is not None:
            kw = dict(case.graph)
            stmcdi.pp.spatial_graph(adata, n_neighs=kw.pop("n_neighs"), **kw)
        STMCDI.setup_anndata(adata, layer=case.layer, mask_layer=case.mask_layer)
        model = STMCDI(adata, **SMALL)
        model.train(**TRAIN)
        done = []
        for target, inplace in case.targets:
            if not case.expect_fill[target]:
                with pytest.raises(ValueError, match="Nothing to fill") as info:
                    model.impute(target=target, n_samples=N_SAMPLES, inplace=inplace)
                assert_good_error(info.value, Case(**{**case.__dict__, "expect": {}}))
                done.append(f"{target}: nothing to fill")
                continue
            check_imputation(model, case, adata, target, inplace)
            done.append(target)
    few = ", few spots" if adata.n_obs <= 6 else ""
    return f"imputed ({'; '.join(sorted(done))}{few})"


def check_case(case: Case) -> None:
    note(case.description)
    note(f"expected refusals: {case.expect}")
    before = snapshot(case.base)
    try:
        try:
            outcome = run_pipeline(case)
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - every other exception must be a good refusal
            message = assert_good_error(exc, case)
            named = [d for d, ws in case.expect.items() if any(w.lower() in message.lower() for w in ws)]
            outcome = f"refused ({named[0]})" if named else f"refused (unforeseen): {message[:60]}"
        else:
            assert not case.expect, f"the draw has defects {sorted(case.expect)} but nothing was refused"
        assert_unchanged(before, case.base, rebuilt=case.graph is not None)
    except BaseException:
        FAILURES["pipeline"] += 1
        raise
    event(outcome)
    OUTCOMES[outcome] += 1


# --------------------------------------------------------------------------------------------------- tests
@PROPERTY_SETTINGS
@given(case=cases())
def test_pipeline_refuses_clearly_or_imputes_finite_values_keeping_observed_entries(case):
    EXAMPLES["pipeline"] += 1
    check_case(case)


def test_examples_were_drawn():
    """Records the number of examples drawn (printed with ``-s`` or in the report on failure)."""
    if not EXAMPLES:
        pytest.skip("the property tests did not run in this session")
    print(f"\nhypothesis examples drawn: {dict(EXAMPLES)} (failing: {dict(FAILURES)}); outcomes:")
    for outcome, n in OUTCOMES.most_common():
        print(f"  {n:4d}  {outcome}")
    if FAILURES:
        pytest.skip("the property failed (see its report); hypothesis stopped drawing early")
    assert EXAMPLES["pipeline"] >= PROPERTY_SETTINGS.max_examples
