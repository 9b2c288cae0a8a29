"""Tissue maps of observed, imputed and uncertainty layers (matplotlib only)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from docrep import DocstringProcessor
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.spatial import cKDTree

from stmcdi._constants import KEYS
from stmcdi._validation import check_number, get_coordinates

logger = logging.getLogger(__name__)

_MISSING_FACE = "0.85"  # light grey
_MISSING_EDGE = "0.35"
_FILLED_EDGE = "black"
_EXPRESSION_LABEL = "log-normalised expression"
_SPREAD_LABEL = "sd"

#: Text shared by the plotting functions: their last three parameters and the Returns section.
_doc = DocstringProcessor(
    figure_output="""show
    Whether to call :func:`matplotlib.pyplot.show`. Default: only in interactive sessions
    (:func:`matplotlib.pyplot.isinteractive`).
save
    File to write the figure to; the format follows the extension (any format matplotlib supports).
return_fig
    Whether to return the figure.

Returns
-------
The :class:`~matplotlib.figure.Figure` if ``return_fig``, else ``None``.""",
)


def _finish(fig: Figure, *, show: bool | None, save: str | Path | None, return_fig: bool, what: str) -> Figure | None:
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
        logger.info("Saved the %s to %s", what, save)
    if show is None:
        show = plt.isinteractive()
    if show:
        plt.show()
    return fig if return_fig else None


def _as_list(x, what: str) -> list[str]:
    if isinstance(x, str):
        return [x]
    if x is None:
        raise ValueError(f"`{what}` is None; pass a name or a list of names.")
    out = [str(v) for v in x]
    if not out:
        raise ValueError(f"`{what}` is empty; pass at least one name.")
    return out


def _is_spread(layer: str) -> bool:
    low = layer.lower()
    return low.endswith(("_std", "_sd")) or low in ("std", "sd")


def _panel_label(layer: str, observed: str | None) -> str:
    if layer == observed:
        return f"observed ({layer})"
    if layer == KEYS.IMPUTED:
        return "imputed"
    if layer == KEYS.IMPUTED_STD:
        return "spread (sd)"
    if _is_spread(layer):
        return f"spread ({layer})"
    return layer


def _column(adata: AnnData, layer: str, j: int) -> np.ndarray:
    X = adata.layers[layer]
    col = X[:, j]
    col = col.toarray() if sp.issparse(col) else np.asarray(col)
    return col.astype(np.float64, copy=False).ravel()


def _check_layer(adata: AnnData, layer: str, what: str) -> None:
    if layer not in adata.layers:
        raise KeyError(
            f"{what} {layer!r} is not in adata.layers (available: {list(adata.layers.keys())}). "
            f"Run `stmcdi.pp.normalize` for {KEYS.LOGNORM!r} and the model's imputation for "
            f"{KEYS.IMPUTED!r}/{KEYS.IMPUTED_STD!r}, or pass `layers=` naming layers that exist."
        )


def _default_size(coords: np.ndarray, map_width_in: float = 2.7) -> float:
    """Marker area (points²) making neighbouring spots nearly touch on a map ``map_width_in`` inches wide."""
    n = coords.shape[0]
    if n < 2:
        return 100.0
    span = float(np.ptp(coords, axis=0).max())
    if span <= 0:
        return 100.0
    nn, _ = cKDTree(coords).query(coords, k=2)
    spacing = float(np.median(nn[:, 1]))
    if spacing <= 0:
        spacing = span / np.sqrt(n)
    diameter_pt = 0.9 * spacing * map_width_in * 72.0 / span
    return float(np.clip(diameter_pt**2, 0.5, 400.0))


@_doc.dedent
def imputation(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    layers: str | Sequence[str] = (KEYS.LOGNORM, KEYS.IMPUTED, KEYS.IMPUTED_STD),
    spatial_key: str = KEYS.SPATIAL,
    missing_layer: str | None = None,
    size: float | None = None,
    cmap: str = "viridis",
    ncols: int | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Tissue maps of observed, imputed and uncertainty layers: one row per gene, one column per layer.

    Spots are drawn at their coordinates (equal aspect, y axis pointing down as in tissue images). Entries that
    are missing (NaN in ``missing_layer``) are drawn light grey with a grey outline where a panel has no value
    for them, and with a black outline where a panel has a value (the filled entries of ``"imputed"``). The
    expression layers of one gene share one colour scale; spread layers (``"imputed_std"`` and names ending in
    ``_std``/``_sd``) get their own. Each panel has a labelled colorbar.

    Parameters
    ----------
    adata
        Annotated data with the layers to draw and coordinates in ``obsm[spatial_key]``.
    genes
        A gene name or a list of them (``adata.var_names``).
    layers
        Layers to draw, one column each, e.g. ``("lognorm", "imputed", "imputed_std")``.
    spatial_key
        Key of the ``(n_obs, 2)`` coordinates in ``adata.obsm``.
    missing_layer
        Layer whose NaN entries mark the missing values, titled "observed". Default: ``"lognorm"`` when that
        layer exists, else no entries are marked.
    size
        Marker area in points² (:func:`matplotlib.pyplot.scatter` ``s``). Default: from the number of spots.
    cmap
        Matplotlib colormap name.
    ncols
        Panels per row. Default: the number of layers (one row per gene); a smaller value wraps the panels,
        which stay in gene-then-layer order.
    %(figure_output)s

    Examples
    --------
    >>> import numpy as np
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=100, n_genes=20)
    >>> x = np.log1p(adata.X.toarray())
    >>> adata.layers["imputed"] = x.copy()
    >>> x[::7, 0] = np.nan
    >>> adata.layers["lognorm"] = x
    >>> fig = stmcdi.pl.imputation(
    ...     adata, ["gene00", "gene01"], layers=["lognorm", "imputed"], show=False, return_fig=True
    ... )
    >>> len(fig.axes) - len([a for a in fig.axes if a.get_label() == "<colorbar>"])
    4
    """
    genes = _as_list(genes, "genes")
    layers = _as_list(layers, "layers")
    absent = [g for g in genes if g not in adata.var_names]
    if absent:
        raise KeyError(
            f"Genes not in adata.var_names: {absent}. Check the spelling (names are case-sensitive), e.g. "
            f"{list(adata.var_names[:5])}."
        )
    for layer in layers:
        _check_layer(adata, layer, "Layer")
    if missing_layer is None:
        missing_layer = KEYS.LOGNORM if KEYS.LOGNORM in adata.layers else None
    else:
        _check_layer(adata, missing_layer, "missing_layer")
    if ncols is not None:
        check_number(ncols, "ncols", integer=True, low=1)
    if size is not None:
        check_number(size, "size", low=0, low_open=True)

    coords = get_coordinates(adata, spatial_key)[:, :2]
    n_obs = adata.n_obs
    if size is None:
        size = _default_size(coords)

    n_panels = len(genes) * len(layers)
    ncols = len(layers) if ncols is None else min(int(ncols), n_panels)
    nrows = int(np.ceil(n_panels / ncols))
    span = np.ptp(coords, axis=0) if n_obs else np.ones(2)
    aspect = float(np.clip(span[1] / span[0], 0.3, 3.0)) if span[0] > 0 and span[1] > 0 else 1.0
    panel_w = 3.6
    panel_h = 2.9 * aspect + 0.5
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_w * ncols, panel_h * nrows), squeeze=False, layout="constrained"
    )
    axes_flat = axes.ravel()
    for ax in axes_flat[n_panels:]:
        fig.delaxes(ax)

    var_index = {g: i for i, g in enumerate(adata.var_names)}
    for gi, gene in enumerate(genes):
        j = var_index[gene]
        values = {layer: _column(adata, layer, j) for layer in layers}
        missing = np.isnan(_column(adata, missing_layer, j)) if missing_layer is not None else np.zeros(n_obs, bool)
        expr = [values[layer] for layer in layers if not _is_spread(layer)]
        finite = np.concatenate([v[np.isfinite(v)] for v in expr]) if expr else np.empty(0)
        shared = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
        for li, layer in enumerate(layers):
            ax = axes_flat[gi * len(layers) + li]
            v = values[layer]
            nan = ~np.isfinite(v)
            spread = _is_spread(layer)
            if spread:
                ok = v[~nan]
                vmin, vmax = (float(ok.min()), float(ok.max())) if ok.size else (None, None)
            else:
                vmin, vmax = shared
            norm = Normalize(vmin=vmin, vmax=vmax)
            plain = ~nan & ~missing
            filled = ~nan & missing
            if plain.any():
                ax.scatter(
                    coords[plain, 0], coords[plain, 1], c=v[plain], cmap=cmap, norm=norm, s=size,
                    linewidths=0, edgecolors="none",
                )  # fmt: skip
            if filled.any():
                ax.scatter(
                    coords[filled, 0], coords[filled, 1], c=v[filled], cmap=cmap, norm=norm, s=size,
                    linewidths=0.6, edgecolors=_FILLED_EDGE,
                )  # fmt: skip
            if nan.any():
                outlined = layer == missing_layer
                ax.scatter(
                    coords[nan, 0], coords[nan, 1], c=_MISSING_FACE, s=size, linewidths=0.6 if outlined else 0,
                    edgecolors=_MISSING_EDGE if outlined else "none",
                )  # fmt: skip
            ax.set_title(f"{gene} — {_panel_label(layer, missing_layer)}", fontsize="medium")
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if not ax.yaxis_inverted():
                ax.invert_yaxis()
            label = _SPREAD_LABEL if spread else (_EXPRESSION_LABEL if layer in (KEYS.LOGNORM, KEYS.IMPUTED) else layer)
            fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label, shrink=0.8)
            handles = []
            if nan.any():
                if layer == missing_layer:
                    missing_handle = {"mfc": _MISSING_FACE, "mec": _MISSING_EDGE, "label": "missing"}
                else:
                    missing_handle = {"mfc": _MISSING_FACE, "mec": "none", "label": "no value"}
                handles.append(Line2D([], [], ls="", marker="o", **missing_handle))
            if filled.any():
                handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec=_FILLED_EDGE, label="filled"))
            if handles:
                ax.legend(
                    handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=len(handles),
                    frameon=False, fontsize="small", handletextpad=0.2, borderaxespad=0.2,
                )  # fmt: skip

    return _finish(fig, show=show, save=save, return_fig=return_fig, what="imputation maps")
