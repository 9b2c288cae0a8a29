"""Loaders for the public spatial transcriptomics datasets used in the stmcdi docs and benchmarks.

Each loader looks for its ``.h5ad`` file, in order: the ``path`` argument (a file, or a directory holding the
named file), the directory in the environment variable ``STMCDI_DATA_DIR``, and the package cache
(``$XDG_CACHE_HOME/stmcdi``, default ``~/.cache/stmcdi``). When none has it, the two Ståhl et al. (2016)
datasets are downloaded as plain count tables from the SpatialDE repository, converted with
:func:`read_st_count_table` and cached as ``.h5ad``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData, read_h5ad
from docrep import DocstringProcessor

logger = logging.getLogger(__name__)

#: Environment variable naming a directory that holds the dataset files.
DATA_DIR_ENV = "STMCDI_DATA_DIR"

_SPATIALDE_REPO = "Teichlab/SpatialDE"
# The count tables are stored with Git LFS in Teichlab/SpatialDE (``.gitattributes``: ``*.csv``/``*.tsv``
# filter=lfs), so raw.githubusercontent.com only serves the LFS pointer; media.githubusercontent.com serves the
# content. Paths, commits and the LFS object ids (sha256 and size of the content) were read from the pointer
# files at these commits.
_MOB_COMMIT = "ad411d51e887575a34c90d3f12fd9c6844e35c9f"
_MOB_PATH = "Analysis/MouseOB/data/Rep11_MOB_0.csv"
_BC_COMMIT = "618f6a08d6d8ea24ef9e9b22ce2dd5e25acf9fbe"
_BC_PATH = "Analysis/BreastCancer/data/Layer2_BC_count_matrix-1.tsv"


def _spatialde_url(commit: str, path: str) -> str:
    return f"https://media.githubusercontent.com/media/{_SPATIALDE_REPO}/{commit}/{path}"


#: Upstream URL of the mouse olfactory bulb count table (spots x genes, comma separated).
MOUSE_OB_URL = _spatialde_url(_MOB_COMMIT, _MOB_PATH)
#: Upstream URL of the breast cancer layer 2 count table (spots x genes, tab separated).
BREAST_CANCER_URL = _spatialde_url(_BC_COMMIT, _BC_PATH)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a public dataset lives and what it should look like.

    Parameters
    ----------
    name
        Human-readable name.
    filename
        File name of the converted ``.h5ad`` (in ``path``, ``STMCDI_DATA_DIR`` or the cache).
    shape
        Expected ``(n_spots, n_genes)`` of the reference file.
    sha256
        sha256 of the reference ``.h5ad`` in the stmcdi data release, or ``None``.
    url
        Upstream URL of a plain count table, or ``None`` when there is no download.
    sep
        Column separator of the table at ``url``.
    url_sha256
        sha256 of the content at ``url`` (checked after download), or ``None`` to skip the check.
    url_size
        Size in bytes of the content at ``url``, or ``None``.
    provenance
        ``uns["provenance"]`` entries for a converted download.
    manual
        How to obtain the file by hand (used in the error when it cannot be found or downloaded).
    """

    name: str
    filename: str
    shape: tuple[int, int]
    sha256: str | None = None
    url: str | None = None
    sep: str = ","
    url_sha256: str | None = None
    url_size: int | None = None
    provenance: dict = field(default_factory=dict)
    manual: str = ""


def _stahl2016(name: str, filename: str, shape: tuple[int, int], sha256: str, *, commit: str, path: str, sep: str,
               url_sha256: str, url_size: int, tissue: str, species: str) -> DatasetSpec:
    """Spec of a Ståhl et al. (2016) count table in the SpatialDE repository, converted on download."""
    url = _spatialde_url(commit, path)
    provenance = {
        "name": name,
        "source_repo": _SPATIALDE_REPO,
        "source_paths": path,
        "source_commit": commit,
        "upstream": url,
        "original_publication": (
            "Stahl PL et al. (2016) Visualization and analysis of gene expression in tissue sections by spatial "
            "transcriptomics. Science 353:78-82. doi:10.1126/science.aaf2403"
        ),
        "also_cite": "Svensson V, Teichmann SA, Stegle O (2018) SpatialDE. Nat Methods 15:343-346. "
                     "doi:10.1038/nmeth.4636",
        "platform": "Spatial Transcriptomics (ST, 100 um spots, 200 um pitch)",
        "tissue": tissue,
        "species": species,
        "license": "SpatialDE repository: MIT; original data from spatialresearch.org, terms not stated",
        "coordinates": "obsm['spatial'] = (x, y) parsed from spot names 'XxY' (ST array coordinates, array units)",
        "preprocessing": "none: converted by stmcdi.datasets.read_st_count_table (all spots and genes kept)",
    }
    manual = (
        f"Download {url} (the count table of {_SPATIALDE_REPO} {path}) and convert it with "
        f"`stmcdi.datasets.read_st_count_table(path, sep={sep!r}).write_h5ad({filename!r})`."
    )
    return DatasetSpec(name, filename, shape, sha256, url, sep, url_sha256, url_size, provenance, manual)


#: The Parameters and Returns sections of the loaders of the Ståhl et al. (2016) tables.
_doc = DocstringProcessor(
    stahl_parameters_returns="""Parameters
----------
path
    The ``.h5ad`` file, or a directory holding it under the file name above. ``None`` searches the
    ``STMCDI_DATA_DIR`` directory and the cache (``~/.cache/stmcdi``), then downloads.
download
    Whether to download when the file is found nowhere.

Returns
-------
AnnData with raw counts in ``X`` (CSR float32) and coordinates in ``obsm["spatial"]``.""",
)

#: The datasets known to the loaders, by loader name. Tests may substitute entries (e.g. a ``file://`` URL).
DATASETS: dict[str, DatasetSpec] = {
    "mouse_olfactory_bulb": _stahl2016(
        "Stahl 2016 mouse olfactory bulb, replicate 11", "stahl2016_mob_rep11.h5ad", (262, 16218),
        "2d71b9ec51f4e62a77b8580150592f87ef60e5d2ac057721a57666c2985da99b", tissue="olfactory bulb",
        url_sha256="df7cb0b838e2a9b9de3424024d084f38cbfc16b20fbd64ed2787a942039b6c3e", url_size=8790005,
        commit=_MOB_COMMIT, path=_MOB_PATH, sep=",", species="Mus musculus",
    ),
    "breast_cancer_layer2": _stahl2016(
        "Stahl 2016 human breast cancer biopsy, layer 2", "stahl2016_breast_cancer_layer2.h5ad", (251, 14789),
        "5796a4c68eb6084b04d5fa59cdc5b50ad0f9e8a5eb5f5d88a2e0136d2017b952",
        url_sha256="fe19a57e382bd35009f5552eec4f94254fab9b6834e74ea7525f219cac559ae2", url_size=7530255,
        commit=_BC_COMMIT, path=_BC_PATH, sep="\t", tissue="breast cancer biopsy (layer 2)", species="Homo sapiens",
    ),
    "dlpfc_151673": DatasetSpec(
        name="Human DLPFC 10x Visium sample 151673 (top 5000 HVGs)",
        filename="maynard2021_dlpfc_151673_hvg5000.h5ad",
        shape=(3639, 5000),
        sha256="57af522f9dc55d2100acb9e1125093629b2550a310e43eae7f79f1b49b7b25ea",
        url=None,
        manual=(
            "There is no plain public count table of this subset to download. It was built from the R data "
            "file `data/dlpfc151673.rda` of prabhakarlab/Banksy at commit "
            "3a310a384b1f553603c645df068c0efe1d40c280 (3,639 spots x top-5000 HVGs of Maynard et al. 2021, "
            "the LIBD spatialLIBD release), with Ensembl IDs renamed to gene symbols and the manual layer "
            "labels of Banksy's `data/dlpfc_annotation` in obs['layer']. Get the prepared file "
            "`maynard2021_dlpfc_151673_hvg5000.h5ad` from the stmcdi data release (or build it from those "
            "sources) and pass `path=` (the file or its directory) or set the STMCDI_DATA_DIR environment "
            "variable to its directory."
        ),
    ),
}

_SPOT_NAME = re.compile(r"^\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)x(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")


def cache_dir() -> Path:
    """The stmcdi download cache: ``$XDG_CACHE_HOME/stmcdi``, or ``~/.cache/stmcdi``.

    Returns
    -------
    The cache directory (not created here).

    Examples
    --------
    >>> cache_dir().name
    'stmcdi'
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stmcdi"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_spot_names(names) -> np.ndarray | None:
    """``(n, 2)`` float64 coordinates from names ``"<x>x<y>"``, or ``None`` if any name does not match."""
    coords = np.empty((len(names), 2), dtype=np.float64)
    for i, name in enumerate(names):
        m = _SPOT_NAME.match(str(name))
        if m is None:
            return None
        coords[i] = float(m.group(1)), float(m.group(2))
    return coords


def read_st_count_table(path_or_buffer, sep: str = ",", *, provenance: dict | None = None) -> AnnData:
    r"""Read a Spatial Transcriptomics count table into the package's common AnnData format.

    The table has spot names ``"<x>x<y>"`` on one axis (the ST array coordinates) and gene names on the other,
    with the first column as row labels, as in the tables of Ståhl et al. (2016) shipped by SpatialDE (spots as
    rows). The orientation is detected from the labels: if the column labels are the spot names, the table is
    transposed.

    Parameters
    ----------
    path_or_buffer
        File path, URL or file-like object, as accepted by :func:`pandas.read_csv` (compression inferred).
    sep
        Column separator: ``","`` for ``.csv``, ``"\t"`` for ``.tsv``.
    provenance
        Optional dict stored as ``uns["provenance"]``.

    Returns
    -------
    AnnData with ``X`` as CSR float32 counts (spots x genes), ``obsm["spatial"]`` (float64 (x, y) parsed from
    the spot names), ``obs["total_counts"]``, ``var["total_counts"]`` and ``uns["provenance"]``.

    Examples
    --------
    >>> import io
    >>> table = io.StringIO(",Gfap,Actb\n10.1x5.0,3,0\n11.0x5.1,0,7\n")
    >>> adata = read_st_count_table(table)
    >>> adata.shape, adata.obsm["spatial"].tolist()
    ((2, 2), [[10.1, 5.0], [11.0, 5.1]])
    """
    df = pd.read_csv(path_or_buffer, sep=sep, index_col=0)
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(
            f"The count table is empty (shape {df.shape}). Check the file and the separator (sep={sep!r})."
        )
    coords = _parse_spot_names(df.index)
    if coords is None:
        coords = _parse_spot_names(df.columns)
        if coords is None:
            raise ValueError(
                "Neither the row labels nor the column labels of the count table are all spot names of the form "
                f"'<x>x<y>' (first row labels: {list(df.index[:3])}, first column labels: {list(df.columns[:3])}). "
                f"Check the separator (sep={sep!r}) and that the first column holds the row labels."
            )
        logger.info("Spot names are the column labels: transposing the table to spots x genes.")
        df = df.T
    spot_names = pd.Index(df.index.astype(str).str.strip())
    gene_names = pd.Index(df.columns.astype(str).str.strip())
    for what, names in (("spot", spot_names), ("gene", gene_names)):
        if not names.is_unique:
            dup = names[names.duplicated()].unique()[:5].tolist()
            raise ValueError(f"The count table has duplicated {what} names (e.g. {dup}); they must be unique.")
    if len(np.unique(coords, axis=0)) != len(coords):
        raise ValueError("Several spots of the count table share the same coordinates; spot names must be unique.")
    try:
        values = df.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"The count table has non-numeric entries ({err}). Check the separator (sep={sep!r})."
        ) from err
    if not np.isfinite(values).all() or (values < 0).any() or (values != np.round(values)).any():
        raise ValueError(
            "The count table must hold finite, non-negative integer counts; found missing, negative or "
            "fractional values. Pass raw counts, not normalised values."
        )
    obs = pd.DataFrame(index=spot_names)
    var = pd.DataFrame(index=gene_names)
    adata = AnnData(X=sp.csr_matrix(values.astype(np.float32)), obs=obs, var=var)
    adata.obsm["spatial"] = coords
    adata.obs["total_counts"] = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    adata.var["total_counts"] = np.asarray(adata.X.sum(axis=0), dtype=np.float64).ravel()
    adata.uns["provenance"] = dict(provenance) if provenance else {"name": "ST count table"}
    return adata


def _candidates(spec: DatasetSpec) -> list[Path]:
    out = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        out.append(Path(env).expanduser() / spec.filename)
    out.append(cache_dir() / spec.filename)
    return out


def _resolve_explicit(path, spec: DatasetSpec) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / spec.filename
    if not p.is_file():
        raise FileNotFoundError(
            f"{spec.name}: no file at {p}. Pass `path=` as the .h5ad file itself or as a directory that holds "
            f"{spec.filename!r}, or leave `path=None` to search {DATA_DIR_ENV} and the cache ({cache_dir()})."
        )
    return p


def _download(spec: DatasetSpec, dest: Path) -> None:
    """Fetch ``spec.url``, check it, convert the table and write the ``.h5ad`` to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading %s from %s", spec.name, spec.url)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            with urllib.request.urlopen(spec.url, timeout=120) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError) as err:
            raise ConnectionError(
                f"{spec.name}: could not download {spec.url} ({err}). Without network access, obtain the file "
                f"by hand: {spec.manual} Then pass `path=` or set {DATA_DIR_ENV}."
            ) from err
        with open(tmp, "rb") as fh:
            head = fh.read(200)
        if head.startswith(b"version https://git-lfs"):
            raise ValueError(
                f"{spec.name}: {spec.url} returned a Git LFS pointer instead of the table (LFS quota or wrong "
                f"host). {spec.manual}"
            )
        size = tmp.stat().st_size
        if spec.url_size is not None and size != spec.url_size:
            raise ValueError(
                f"{spec.name}: the download from {spec.url} has {size} bytes, expected {spec.url_size}. The file "
                "may be truncated or changed upstream; delete it and try again, or obtain it by hand."
            )
        if spec.url_sha256 is not None:
            digest = _sha256(tmp)
            if digest != spec.url_sha256:
                raise ValueError(
                    f"{spec.name}: the download from {spec.url} has sha256 {digest}, expected {spec.url_sha256}. "
                    "The file may be corrupted or changed upstream; try again, or obtain it by hand."
                )
        adata = read_st_count_table(tmp, sep=spec.sep, provenance=spec.provenance)
        if adata.shape != spec.shape:
            logger.warning(
                "%s: the converted download has shape %s; the stmcdi reference file has %s.",
                spec.name,
                adata.shape,
                spec.shape,
            )
        part = dest.with_name(dest.name + ".part")
        adata.write_h5ad(part, compression="gzip")
        part.replace(dest)
        logger.info("Cached %s at %s", spec.name, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _to_common_format(adata: AnnData, spec: DatasetSpec, source: Path) -> AnnData:
    if "spatial" not in adata.obsm:
        raise ValueError(
            f"{source} has no obsm['spatial'] coordinates, so it is not a {spec.name} file in the stmcdi format. "
            f"Delete it (or point `path=` elsewhere) and load again. {spec.manual}"
        )
    if not (sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32):
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if adata.shape != spec.shape:
        logger.warning("%s: %s has shape %s, expected %s.", spec.name, source, adata.shape, spec.shape)
    return adata


def load_dataset(key: str, path=None, *, download: bool = True) -> AnnData:
    """Load one of the public datasets by key (the name of its loader).

    Parameters
    ----------
    key
        One of ``"mouse_olfactory_bulb"``, ``"breast_cancer_layer2"``, ``"dlpfc_151673"``.
    path
        A ``.h5ad`` file, or a directory holding the dataset's file. ``None`` searches ``STMCDI_DATA_DIR``
        and the cache, then downloads.
    download
        Whether to download (into the cache) when the file is found nowhere.

    Returns
    -------
    The dataset in the common format (see :mod:`stmcdi.datasets`).

    Examples
    --------
    >>> adata = load_dataset("mouse_olfactory_bulb")  # doctest: +SKIP
    """
    if key not in DATASETS:
        raise KeyError(f"Unknown dataset {key!r}; choose one of {sorted(DATASETS)}.")
    spec = DATASETS[key]
    if path is not None:
        source = _resolve_explicit(path, spec)
    else:
        source = next((p for p in _candidates(spec) if p.is_file()), None)
        if source is None:
            searched = ", ".join(str(p) for p in _candidates(spec))
            if spec.url is None or not download:
                why = "downloading is switched off" if spec.url is not None else "it cannot be downloaded"
                raise FileNotFoundError(
                    f"{spec.name}: {spec.filename!r} not found (searched {searched}) and {why}. {spec.manual}"
                    + ("" if spec.url is None else f" Pass `path=` or set {DATA_DIR_ENV}.")
                )
            source = cache_dir() / spec.filename
            _download(spec, source)
    logger.info("Reading %s from %s", spec.name, source)
    return _to_common_format(read_h5ad(source), spec, source)


@_doc.dedent
def mouse_olfactory_bulb(path=None, *, download: bool = True) -> AnnData:
    """Mouse olfactory bulb, replicate 11 of Ståhl et al. (2016): 262 spots x 16,218 genes (ST).

    The standard small example of SpatialDE and SPARK; spots are 100 µm wide on a 200 µm grid and their
    coordinates are ST array positions (about 1 unit apart). The file is ``stahl2016_mob_rep11.h5ad``; when it
    is absent locally, the count table ``Analysis/MouseOB/data/Rep11_MOB_0.csv`` of Teichlab/SpatialDE is
    downloaded, checked against its sha256 and cached.

    %(stahl_parameters_returns)s

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.mouse_olfactory_bulb()  # doctest: +SKIP
    >>> adata.shape  # doctest: +SKIP
    (262, 16218)
    """
    return load_dataset("mouse_olfactory_bulb", path, download=download)


@_doc.dedent
def breast_cancer_layer2(path=None, *, download: bool = True) -> AnnData:
    """Human breast cancer biopsy, layer 2 of Ståhl et al. (2016): 251 spots x 14,789 genes (ST).

    The file is ``stahl2016_breast_cancer_layer2.h5ad``; when it is absent locally, the count table
    ``Analysis/BreastCancer/data/Layer2_BC_count_matrix-1.tsv`` of Teichlab/SpatialDE is downloaded, checked
    against its sha256 and cached. (The stmcdi reference file was built from the copy of the same data in the
    SPARK R package; the two were not byte-compared, so a converted download may differ in details, e.g. the
    gene count.)

    %(stahl_parameters_returns)s

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.breast_cancer_layer2("~/data", download=False)  # doctest: +SKIP
    >>> adata.shape  # doctest: +SKIP
    (251, 14789)
    """
    return load_dataset("breast_cancer_layer2", path, download=download)


def dlpfc_151673(path=None) -> AnnData:
    """Human DLPFC 10x Visium section 151673 (Maynard et al. 2021), top 5,000 HVGs: 3,639 spots.

    Carries the manual cortical-layer labels in ``obs["layer"]`` (L1-L6, WM; NaN for 28 spots). There is no
    plain public table of this subset, so it is not downloaded: point ``path=`` or ``STMCDI_DATA_DIR`` at the
    prepared ``maynard2021_dlpfc_151673_hvg5000.h5ad`` (the error message says where it comes from).

    Parameters
    ----------
    path
        The ``.h5ad`` file, or a directory holding ``maynard2021_dlpfc_151673_hvg5000.h5ad``. ``None`` searches
        the ``STMCDI_DATA_DIR`` directory and the cache (``~/.cache/stmcdi``).

    Returns
    -------
    AnnData with raw counts in ``X`` (CSR float32), coordinates in ``obsm["spatial"]`` (undocumented units,
    nearest-neighbour distance about 6.2) and ``obs["layer"]``.

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.dlpfc_151673("/path/to/data")  # doctest: +SKIP
    >>> adata.shape  # doctest: +SKIP
    (3639, 5000)
    """
    return load_dataset("dlpfc_151673", path, download=False)
