"""A small simulated spatial transcriptomics section with known structure (CPU demos and tests)."""

from __future__ import annotations

import logging
import numbers

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

logger = logging.getLogger(__name__)

#: Fraction of genes that are markers of one domain.
_MARKER_FRACTION = 0.3
#: Number of smooth spatial gradient programmes (the low-rank part).
_N_PROGRAMMES = 3
#: Standard deviation of the per-spot log library-size factor.
_LIBRARY_SD = 0.3


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
    return int(value)


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a positive number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value}.")
    return value


def hex_lattice(n_spots: int) -> np.ndarray:
    """Coordinates of ``n_spots`` spots on a roughly square hexagonal (Visium-like) lattice.

    Rows are ``sqrt(3) / 2`` apart and every other row is shifted by half a spot, so each interior spot has six
    neighbours at distance 1. Spots fill the rows in reading order; the last row may be partly filled.

    Parameters
    ----------
    n_spots
        Number of spots (>= 1).

    Returns
    -------
    ``(n_spots, 2)`` float64 array of (x, y) positions, starting at (0, 0).

    Examples
    --------
    >>> hex_lattice(4).round(3)
    array([[0.   , 0.   ],
           [1.   , 0.   ],
           [0.5  , 0.866],
           [1.5  , 0.866]])
    """
    n_spots = _check_int(n_spots, "n_spots", 1)
    row_height = np.sqrt(3.0) / 2.0
    # width n_cols, height n_rows * row_height; square when n_rows ~= n_cols / row_height
    n_cols = max(1, int(np.ceil(np.sqrt(n_spots * row_height))))
    idx = np.arange(n_spots)
    row, col = np.divmod(idx, n_cols)
    x = col + 0.5 * (row % 2)
    y = row * row_height
    return np.column_stack([x, y]).astype(np.float64)


def _domains(coords: np.ndarray, n_domains: int, rng: np.random.Generator) -> np.ndarray:
    """Contiguous domains: Voronoi cells of balanced seeds, in smoothly warped coordinates (curved borders)."""
    n = coords.shape[0]
    if n_domains == 1:
        return np.zeros(n, dtype=np.int64)
    span = np.ptp(coords, axis=0).max()
    span = span if span > 0 else 1.0
    # A smooth warp (a homeomorphism: amplitude * frequency < 1) bends the straight Voronoi borders.
    freq = 2.0 * np.pi / span
    amp = 0.08 * span
    phase = rng.uniform(0, 2 * np.pi, size=2)
    warped = np.column_stack(
        [
            coords[:, 0] + amp * np.sin(freq * coords[:, 1] + phase[0]),
            coords[:, 1] + amp * np.sin(freq * coords[:, 0] + phase[1]),
        ]
    )
    # Farthest-point seeds, then a few Lloyd iterations, give compact regions of similar size.
    seeds = [int(rng.integers(n))]
    dist = np.linalg.norm(warped - warped[seeds[0]], axis=1)
    for _ in range(n_domains - 1):
        nxt = int(np.argmax(dist))
        seeds.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(warped - warped[nxt], axis=1))
    centres = warped[seeds].copy()
    for _ in range(10):
        labels = np.argmin(((warped[:, None, :] - centres[None, :, :]) ** 2).sum(-1), axis=1)
        for k in range(n_domains):
            members = labels == k
            if members.any():
                centres[k] = warped[members].mean(axis=0)
    labels = np.argmin(((warped[:, None, :] - centres[None, :, :]) ** 2).sum(-1), axis=1)
    # Number domains in order of their centre (top-left first) so the labels read naturally on a map.
    order = np.lexsort((centres[:, 0], np.round(centres[:, 1], 6)))
    rank = np.empty(n_domains, dtype=np.int64)
    rank[order] = np.arange(n_domains)
    return rank[labels]


def _programmes(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(n, _N_PROGRAMMES)`` smooth spatial fields (a gradient, a radial bump, a wave), each standardised."""
    centred = coords - coords.mean(axis=0)
    span = np.ptp(coords, axis=0).max()
    span = span if span > 0 else 1.0
    angle = rng.uniform(0, 2 * np.pi)
    gradient = centred @ np.array([np.cos(angle), np.sin(angle)])
    centre = coords.min(axis=0) + rng.uniform(0.25, 0.75, size=2) * np.maximum(np.ptp(coords, axis=0), 1e-12)
    radial = np.exp(-((coords - centre) ** 2).sum(axis=1) / (2 * (0.3 * span) ** 2))
    angle2 = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * (centred @ np.array([np.cos(angle2), np.sin(angle2)])) / span)
    fields = np.column_stack([gradient, radial, wave])
    sd = fields.std(axis=0)
    return (fields - fields.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def synthetic(n_spots: int = 600, n_genes: int = 200, *, n_domains: int = 4, depth: float = 2000.0,
              dispersion: float = 5.0, seed: int = 0) -> AnnData:
    """Simulate a small spatial transcriptomics section with domains, markers and smooth gradients.

    Spots lie on a hexagonal lattice (Visium-like, nearest-neighbour distance 1). The section is split into
    ``n_domains`` spatially contiguous domains (Voronoi regions with curved borders). Each gene has a baseline
    log-mean; about 30% of the genes are markers of one domain (log fold change 1-2.5 there); and three smooth
    spatial programmes (a linear gradient, a radial bump and a wave) load on a subset of genes. Expected counts
    are ``library_i * softmax_g(log-rate_ig)``, with lognormal library sizes around ``depth``, and the counts
    are negative binomial with that mean and inverse dispersion ``dispersion``.

    The output follows the package's common format (like the real files of :mod:`stmcdi.datasets`) and holds
    nothing else: no noise-free truth, which downstream code would otherwise treat as data.

    Parameters
    ----------
    n_spots
        Number of spots (>= ``n_domains`` and >= 2).
    n_genes
        Number of genes (>= 1).
    n_domains
        Number of spatial domains (>= 1).
    depth
        Median library size (expected counts per spot).
    dispersion
        Negative-binomial inverse dispersion ``theta`` (variance ``mu + mu**2 / theta``); larger is closer to
        Poisson.
    seed
        Seed of the :func:`numpy.random.default_rng` generator. The same seed gives identical output.

    Returns
    -------
    AnnData with ``X`` (CSR float32 raw counts), ``obsm["spatial"]`` (float64 (x, y)), categorical
    ``obs["domain"]``, ``obs["total_counts"]``, ``var["total_counts"]`` and ``uns["provenance"]`` (the
    simulation parameters).

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=300, n_genes=50, seed=1)
    >>> adata.shape
    (300, 50)
    >>> adata.obs["domain"].cat.categories.tolist()
    ['0', '1', '2', '3']
    """
    n_genes = _check_int(n_genes, "n_genes", 1)
    n_domains = _check_int(n_domains, "n_domains", 1)
    n_spots = _check_int(n_spots, "n_spots", 2)
    if n_spots < n_domains:
        raise ValueError(
            f"`n_spots` ({n_spots}) is smaller than `n_domains` ({n_domains}); every domain needs at least one "
            "spot. Ask for more spots or fewer domains."
        )
    depth = _check_positive(depth, "depth")
    dispersion = _check_positive(dispersion, "dispersion")
    seed = _check_int(seed, "seed", 0)
    rng = np.random.default_rng(int(seed))

    coords = hex_lattice(n_spots)
    domain = _domains(coords, n_domains, rng)
    fields = _programmes(coords, rng)

    # Gene parameters on the log scale.
    baseline = np.clip(rng.normal(0.0, 2.0, size=n_genes), -5.0, 3.5)
    effects = np.zeros((n_domains, n_genes))
    n_markers = int(round(_MARKER_FRACTION * n_genes)) if n_domains > 1 else 0
    markers = rng.choice(n_genes, size=n_markers, replace=False)
    for i, g in enumerate(markers):
        effects[i % n_domains, g] = rng.uniform(1.0, 2.5)
    loadings = rng.normal(0.0, 0.6, size=(_N_PROGRAMMES, n_genes))
    loadings *= rng.random(size=(_N_PROGRAMMES, n_genes)) < 0.4

    log_rate = baseline[None, :] + effects[domain] + fields @ loadings
    log_rate -= log_rate.max(axis=1, keepdims=True)
    proportions = np.exp(log_rate)
    proportions /= proportions.sum(axis=1, keepdims=True)
    library = depth * np.exp(rng.normal(0.0, _LIBRARY_SD, size=n_spots))
    mu = library[:, None] * proportions
    counts = rng.negative_binomial(dispersion, dispersion / (dispersion + mu)).astype(np.float32)

    width_spots = len(str(n_spots - 1))
    width_genes = len(str(n_genes - 1))
    obs = pd.DataFrame(
        {"domain": pd.Categorical(domain.astype(str), categories=[str(k) for k in range(n_domains)], ordered=False)},
        index=pd.Index([f"spot{i:0{width_spots}d}" for i in range(n_spots)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene{g:0{width_genes}d}" for g in range(n_genes)]))
    adata = AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.obsm["spatial"] = coords
    adata.obs["total_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.var["total_counts"] = np.asarray(adata.X.sum(axis=0)).ravel()
    adata.uns["provenance"] = {
        "name": "stmcdi synthetic",
        "seed": int(seed),
        "n_spots": n_spots,
        "n_genes": n_genes,
        "n_domains": n_domains,
        "depth": depth,
        "dispersion": dispersion,
        "platform": "simulated hexagonal lattice (Visium-like), nearest-neighbour distance 1.0",
        "model": (
            "counts ~ NB(mu, theta=dispersion); mu = library * softmax(baseline + domain marker effect + "
            f"{_N_PROGRAMMES} smooth spatial programmes); library ~ depth * LogNormal(0, {_LIBRARY_SD})"
        ),
        "coordinates": "obsm['spatial'] = (x, y) lattice positions in spot units",
    }
    logger.info(
        "Simulated %d spots x %d genes in %d domains (%.1f%% zeros).",
        n_spots,
        n_genes,
        n_domains,
        100.0 * (1.0 - adata.X.nnz / max(1, n_spots * n_genes)),
    )
    return adata
