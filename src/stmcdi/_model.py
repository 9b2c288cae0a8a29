"""STMCDI: the user-facing model (AnnData registration, training, imputation, save/load)."""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from lightning.pytorch.callbacks import EMAWeightAveraging
from scvi import settings
from scvi.data import AnnDataManager
from scvi.data.fields import LayerField, ObsmField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.utils import setup_anndata_dsp

from ._calibration import BestWeights, RelativeEarlyStopping, calibrate, resume_checkpoint
from ._constants import BATCH_KEYS, KEYS, REGISTRY_KEYS, SPREAD_SAMPLES
from ._data import NeighborhoodDataSplitter, neighborhood_loader, registered_counts
from ._estimators import held_back_entries
from ._module import STMCDIModule
from ._targets import draw_targets
from ._threads import with_one_blas_thread
from ._training_plan import DiffusionTrainingPlan
from ._validation import check_counts, check_not_view, check_number, get_coordinates, get_layer, missing_mask
from .pp._graph import check_neighbor_table, spatial_graph
from .pp._normalize import log_normalize

logger = logging.getLogger(__name__)

#: most optimizer steps of a default training run (early stopping ends it sooner)
MAX_STEPS = 3000
#: optimizer steps between two checks of the held-back entries, checks without improvement before stopping, and
#: the least relative improvement that counts
CHECK_STEPS, PATIENCE, MIN_IMPROVEMENT = 50, 3, 0.0025
#: no stop before this many horizons ``1 / (1 - ema_decay)`` of the weight average
MIN_HORIZONS = 2
#: tokens of the denoiser at most (genes are grouped into tokens beyond that)
MAX_TOKENS = 128
#: rounds in which the zeros of ``impute(target="zeros")`` are filled, each hiding one random group of them
ZERO_ROUNDS = 2
_ZERO_ROUNDS_STREAM = 0x2E505
#: version of the saved read-out; models saved without it cannot be loaded
READOUT_VERSION = 2


class STMCDI(UnsupervisedTrainingMixin, BaseModelClass):
    """Spatial transcriptomics imputation by masked conditional diffusion with a spatial GCN (stMCDI).

    Missing entries (NaN in the registered count layer, or marked by ``mask_layer``) are filled from the
    spot's observed entries, a graph-convolutional encoding of its 5 nearest spots and its nearest spots in
    expression space. The written estimate stacks the network's one-pass estimate with classical estimates
    (gene mean, spot depth, tissue and expression neighbours, soft-impute), weighted on observed entries held
    back from training; the spread (``impute(n_samples=5)``) comes from reverse-diffusion samples. Observed entries
    are never changed.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    encoder
        Spatial encoder: ``"gcn"`` (paper), ``"gat"``, ``"gin"``, ``"mlp"`` (no spatial messages) or ``"none"``.
    n_latent
        Width of the spatial code returned by :meth:`get_latent_representation`.
    n_channels
        Width of the denoiser's tokens.
    n_layers
        Residual blocks of the denoiser.
    attention
        ``"latent"`` (attention through 16 latent tokens; linear in the number of genes) or ``"full"``.
    genes_per_token
        Genes per denoiser token; default ``ceil(n_genes / 128)``, so that the cost of a step stops growing
        with the number of genes beyond 128 tokens.
    n_diffusion_steps
        Steps of the quadratic noise schedule.
    mask_ratio
        Fraction of observed entries hidden as training targets: a float, or a ``(low, high)`` range per spot.
    n_expression_neighbors
        Nearest spots in expression space whose mean profile conditions each spot (at most ``n_obs - 1``; ``0``
        conditions on the spatial neighbours alone, as the paper does).
    **module_kwargs
        Further :class:`~stmcdi.STMCDIModule` arguments (``mask_strategy``, ``input_mask``, ``objective``, ...).

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=100, n_genes=30)
    >>> stmcdi.STMCDI.setup_anndata(adata)
    >>> model = stmcdi.STMCDI(adata)
    >>> model.train(max_epochs=1)  # doctest: +SKIP
    >>> model.impute()  # doctest: +SKIP
    """

    _module_cls = STMCDIModule
    _training_plan_cls = DiffusionTrainingPlan
    _data_splitter_cls = NeighborhoodDataSplitter

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        encoder: Literal["gcn", "gat", "gin", "mlp", "none"] = "gcn",
        n_latent: int = 32,
        n_channels: int = 64,
        n_layers: int = 2,
        attention: Literal["latent", "full"] = "latent",
        genes_per_token: int | None = None,
        n_diffusion_steps: int = 50,
        mask_ratio: float | Sequence[float] = (0.1, 0.9),
        n_expression_neighbors: int = 20,
        **module_kwargs,
    ):
        super().__init__(adata, registry)
        n_obs, n_vars = self.summary_stats.n_cells, self.summary_stats.n_vars
        check_number(n_expression_neighbors, "n_expression_neighbors", integer=True, low=0,
                     hint="0 turns the expression neighbours off.")
        #: expression neighbours each batch carries (capped at n_obs - 1)
        self.n_expression_neighbors = int(min(n_expression_neighbors, n_obs - 1))
        if genes_per_token is None:
            genes_per_token = math.ceil(n_vars / MAX_TOKENS)
        counts, mask = registered_counts(self.adata_manager)
        x, _, target_sum = log_normalize(counts, missing_mask(counts, mask))
        mean, std = np.nanmean(x, axis=0, dtype=np.float64), np.nanstd(x, axis=0, dtype=np.float64)
        kwargs = dict(module_kwargs)
        kwargs["expression_profile"] = self.n_expression_neighbors > 0
        if kwargs.get("spot_features", True) and kwargs.get("spot_feature_stats") is None:
            kwargs["spot_feature_stats"] = _spot_feature_stats(counts, x)
        self.module = self._module_cls(
            n_genes=n_vars, gene_mean=mean.astype(np.float32), gene_std=np.where(std > 1e-6, std, 1.0).astype(np.float32),
            target_sum=target_sum, gene_max=np.nanmax(x, axis=0), encoder=encoder, n_latent=n_latent,
            n_channels=n_channels, n_layers=n_layers, attention=attention, genes_per_token=int(genes_per_token),
            n_diffusion_steps=n_diffusion_steps,
            mask_ratio=tuple(mask_ratio) if not np.isscalar(mask_ratio) else float(mask_ratio), **kwargs,
        )
        self._model_summary_string = (
            f"STMCDI model: {n_vars} genes, encoder={encoder}, n_latent={n_latent}, n_channels={n_channels}, "
            f"n_layers={n_layers}, attention={attention}, genes_per_token={genes_per_token}, "
            f"diffusion steps={n_diffusion_steps}, mask_ratio={mask_ratio}, "
            f"expression neighbours={self.n_expression_neighbors}"
        )
        #: observed entries held back from training (boolean CSR), set by train()
        self.held_back_: sp.csr_matrix | None = None
        #: the read-out fitted on them (:func:`stmcdi._calibration.calibrate`), set by train()
        self.readout_: dict | None = None
        self.readout_version_ = READOUT_VERSION
        self.init_params_ = self._get_init_params(locals())

    # ----------------------------------------------------------------------------- registration
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        spatial_key: str = KEYS.SPATIAL,
        neighbors_key: str = KEYS.NEIGHBOR_TABLE,
        mask_layer: str | None = None,
        **kwargs,
    ) -> None:
        """%(summary)s.

        Checks the counts, the coordinates and the spatial neighbour table, then registers them. Missing
        entries are NaN in the count layer, or nonzero in ``mask_layer``. If the neighbour table is absent it
        is built with :func:`stmcdi.pp.spatial_graph` (5 nearest spots); an existing table is checked, never
        rebuilt, so calling this again (as :meth:`load` does) is cheap and changes nothing.

        Parameters
        ----------
        %(param_adata)s
        %(param_layer)s Must hold raw counts (non-negative integers; NaN for missing entries).
        spatial_key
            Key in ``adata.obsm`` with the ``(n_obs, 2 | 3)`` coordinates.
        neighbors_key
            Key in ``adata.obsm`` with the neighbour table of :func:`stmcdi.pp.spatial_graph`.
        mask_layer
            Optional layer whose nonzero entries mark missing entries (in addition to NaN).
        **kwargs
            Passed to :meth:`~scvi.data.AnnDataManager.register_fields` (used by :meth:`load`).

        Returns
        -------
        ``None``. Registers ``adata``; may write the graph keys of :func:`stmcdi.pp.spatial_graph`.

        Examples
        --------
        >>> import stmcdi
        >>> adata = stmcdi.datasets.synthetic(n_spots=60, n_genes=20)
        >>> stmcdi.STMCDI.setup_anndata(adata)
        >>> "spatial_nn" in adata.obsm
        True
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        check_not_view(adata, "STMCDI.setup_anndata")
        if adata.n_obs < 2 or adata.n_vars < 1:
            raise ValueError(f"The AnnData has shape {adata.shape}: STMCDI needs at least 2 spots and 1 gene. "
                             "Check the gene selection (e.g. `--n-genes`) and the spots kept.")
        X = get_layer(adata, layer)
        mask = get_layer(adata, mask_layer) if mask_layer is not None else None
        what = f"adata.layers[{layer!r}]" if layer else "adata.X"
        miss = missing_mask(X, mask)
        check_counts(X, miss, what)
        _check_observed(adata, miss, what)
        get_coordinates(adata, spatial_key)
        if neighbors_key not in adata.obsm:
            if adata.n_obs <= 5:
                raise ValueError(
                    f"{adata.n_obs} spots cannot each have 5 neighbours. Build a smaller graph first with "
                    f"`stmcdi.pp.spatial_graph(adata, n_neighs={max(1, adata.n_obs - 1)})`, then call setup_anndata "
                    "again (or add spots)."
                )
            logger.info("adata.obsm[%r] not found: building the 5-nearest-neighbour graph.", neighbors_key)
            spatial_graph(adata, n_neighs=5, spatial_key=spatial_key, table_key=neighbors_key)
        check_neighbor_table(adata, neighbors_key)
        fields = [LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
                  ObsmField(REGISTRY_KEYS.NEIGHBORS_KEY, neighbors_key)]
        if mask_layer is not None:
            fields.append(LayerField(REGISTRY_KEYS.MISSING_KEY, mask_layer, is_count_data=False))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True) -> AnnData:
        # Check every AnnData other than the registered one: a subset copy carries a stale neighbour table.
        if adata is not None and adata is not self.adata:
            check_not_view(adata, "STMCDI")
            args = self.registry_["setup_args"]
            trained = np.asarray(self.registry_["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]
                                 ["column_names"])
            if adata.n_vars != trained.size or not np.array_equal(np.asarray(adata.var_names), trained):
                raise ValueError(
                    f"This AnnData has {adata.n_vars} genes that differ from (or are ordered unlike) the "
                    f"{trained.size} the model was trained on. Subset and order it first: "
                    "`adata = adata[:, model.adata.var_names].copy()`."
                )
            if args["neighbors_key"] not in adata.obsm:
                spatial_graph(adata, n_neighs=5, spatial_key=args["spatial_key"],
                              table_key=args["neighbors_key"])
            check_neighbor_table(adata, args["neighbors_key"])
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    @classmethod
    def load(cls, dir_path: str, adata: AnnData | None = None, **kwargs):
        """Load a saved model (scvi-tools' :meth:`~scvi.model.base.BaseModelClass.load`), checking it first.

        Refuses an AnnData whose genes differ from the saved ones (or are ordered otherwise), and a model saved
        by a version of stmcdi whose read-out this version cannot rebuild.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            AnnData to attach; must have the saved genes in the saved order. ``None`` uses the saved AnnData.
        **kwargs
            ``accelerator``, ``device``, ``prefix``, ... of scvi-tools' ``load``.

        Returns
        -------
        The loaded :class:`STMCDI`.

        Examples
        --------
        >>> model = stmcdi.STMCDI.load("my_model/", adata=adata)  # doctest: +SKIP
        """
        from scvi.model.base._save_load import _load_saved_files

        attr, var_names, _, _ = _load_saved_files(dir_path, load_adata=False, prefix=kwargs.get("prefix"),
                                                  map_location="cpu")
        if attr.get("readout_version_") != READOUT_VERSION:
            raise ValueError(
                f"The model in {dir_path} was saved by an earlier version of stmcdi, whose read-out this version "
                "does not rebuild. Train it again (`STMCDI(adata).train()`) and save it."
            )
        if adata is not None and not np.array_equal(np.asarray(adata.var_names), np.asarray(var_names)):
            raise ValueError(
                f"This AnnData's {adata.n_vars} genes differ from (or are ordered unlike) the {len(var_names)} the "
                f"model in {dir_path} was trained on. Subset and order it first: `adata = adata[:, genes].copy()` "
                "with `genes = STMCDI.load_registry(dir_path)['field_registries']['X']['state_registry']"
                "['column_names']`."
            )
        return super().load(dir_path, adata=adata, **kwargs)

    # ----------------------------------------------------------------------------- training
    @with_one_blas_thread
    def train(
        self,
        max_epochs: int | None = None,
        *,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        batch_size: int = 64,
        early_stopping: bool = True,
        plan_kwargs: dict | None = None,
        ema_decay: float | None = 0.995,
        checkpoint_dir: str | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the network, then fit the read-out on the held-back entries.

        A few observed entries (5% of those of up to 1024 random spots) are held back from training. About every
        ``CHECK_STEPS`` (50) optimizer steps (in whole epochs: every epoch where an epoch is longer) the network
        predicts them; training stops when that error has not improved by 0.25% for 3 checks (and not before two
        horizons of the weight average, 400 steps at the default decay), and the weights of the best check are kept.
        Then the read-out is fitted on the same entries (see the docs page "Method"): the weights of the stack, the
        zero dispersion and the spread scale, stored in ``model.readout_``.

        Parameters
        ----------
        max_epochs
            Most passes over the spots; default: enough for 3000 optimizer steps.
        accelerator
            ``"auto"``, ``"cpu"``, ``"gpu"``, ... (Lightning).
        devices
            Devices: ``"auto"`` (one GPU if present), a number or a list. Several devices or nodes train with
            Lightning's DDP (``strategy="ddp"``, ``num_nodes=``), through scvi-tools' distributed sampler.
        batch_size
            Spots per minibatch (each brings its 3-hop neighbourhood).
        early_stopping
            Stop when the held-back error stops improving; ``False`` trains for ``max_epochs``.
        plan_kwargs
            Arguments of :class:`~stmcdi.DiffusionTrainingPlan` (``lr``, ``weight_decay``, ...).
        ema_decay
            Decay of the exponential moving average of the weights (Lightning's
            :class:`~lightning.pytorch.callbacks.EMAWeightAveraging`); lowered to ``1 - 10 / total_steps`` on
            short runs. ``None`` disables it.
        checkpoint_dir
            Folder for Lightning checkpoints, written at every check of the held-back entries (``last.ckpt``).
            If it already holds one, training resumes from it: an interrupted run called again with the same seed,
            data and arguments ends with the same weights as an uninterrupted one.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (``strategy``, ``num_nodes``, ``precision="bf16-mixed"``,
            ``callbacks``, ``enable_progress_bar``, ``ckpt_path`` to resume from a Lightning checkpoint, ...).

        Returns
        -------
        ``None``; ``model.history`` holds the logged metrics and ``model.readout_`` the fitted read-out.

        Examples
        --------
        >>> model.train()  # doctest: +SKIP
        >>> model.train(accelerator="gpu", devices=2, strategy="ddp")  # doctest: +SKIP
        """
        if max_epochs is not None:
            check_number(max_epochs, "max_epochs", integer=True, low=1)
        check_number(batch_size, "batch_size", integer=True, low=1)
        steps_per_epoch = math.ceil(self.adata.n_obs / batch_size)
        if max_epochs is None:
            max_epochs = max(1, math.ceil(MAX_STEPS / steps_per_epoch))
        counts, mask = registered_counts(self.adata_manager)
        observed = ~missing_mask(counts, mask).toarray()
        nonzero = None
        if self.module.mask_strategy == "nonzero":
            nonzero = (counts.toarray() if sp.issparse(counts) else np.asarray(counts)) > 0
        seed = 0 if settings.seed is None else int(settings.seed)
        if self.held_back_ is None:  # a second train() continues on the same entries
            self.held_back_ = held_back_entries(observed, seed, nonzero=nonzero)
        best = BestWeights()
        callbacks = [best, *list(trainer_kwargs.pop("callbacks", None) or [])]
        total = max_epochs * steps_per_epoch
        decay = None if ema_decay is None else min(float(ema_decay), 1.0 - 10.0 / max(total, 20))
        if decay is not None:
            callbacks.append(EMAWeightAveraging(decay=decay, use_buffers=False))
        if early_stopping and self.held_back_.nnz:
            # no stop while the moving average still remembers much of its start: MIN_HORIZONS of 1 / (1 - decay)
            min_steps = MIN_HORIZONS * round(1.0 / (1.0 - decay)) if decay is not None else CHECK_STEPS * PATIENCE
            callbacks.append(RelativeEarlyStopping(MIN_IMPROVEMENT, min_steps=min_steps, monitor="validation_mse",
                                                   patience=PATIENCE))
        check_every = max(1, round(CHECK_STEPS / steps_per_epoch))
        if checkpoint_dir is not None:
            from pathlib import Path

            callbacks.append(resume_checkpoint(checkpoint_dir, trainer_kwargs.get("check_val_every_n_epoch",
                                                                                  check_every)))
            trainer_kwargs["enable_checkpointing"] = True
            last = Path(checkpoint_dir) / "last.ckpt"
            if last.exists() and "ckpt_path" not in trainer_kwargs:
                logger.info("Resuming training from %s.", last)
                trainer_kwargs["ckpt_path"] = str(last)
        trainer_kwargs.setdefault("check_val_every_n_epoch", check_every)
        trainer_kwargs.setdefault("log_every_n_steps", max(1, min(50, steps_per_epoch)))
        plan_kwargs = {"seed": seed, **(plan_kwargs or {})}
        datasplitter_kwargs = {
            "n_hops": self.module.n_hops, "held_back": self.held_back_,
            "n_expression_neighbors": self.n_expression_neighbors,
            "target_sampler": functools.partial(draw_targets, mask_strategy=self.module.mask_strategy,
                                                mask_ratio=self.module.mask_ratio),
        }
        t_fit = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*Last batch will have a small size.*")
            super().train(max_epochs=max_epochs, accelerator=accelerator, devices=devices, train_size=1.0,
                          batch_size=batch_size, early_stopping=False, datasplitter_kwargs=datasplitter_kwargs,
                          plan_kwargs=plan_kwargs, callbacks=callbacks, **trainer_kwargs)
        logger.info("Trained %d steps in %.0f s.", self.trainer.global_step if getattr(self, "trainer", None) else -1,
                    time.perf_counter() - t_fit)
        if best.state is not None:
            self.module.load_state_dict(best.state)
            logger.info("Kept the weights of step %d (held-back error %.4f).", best.best_step, best.best_score)
        self.module.eval()
        self.readout_ = calibrate(self, n_samples=SPREAD_SAMPLES, seed=seed)

    def _batch_size_impute(self, n_samples: int = 0) -> int:
        """Spots per imputation batch: memory and time grow with ``batch_size * max(n_samples, 1) * n_genes``."""
        budget = 640 if self.device.type != "cpu" else 160
        return max(1, budget // max(int(n_samples), 1))

    # ----------------------------------------------------------------------------- outputs
    @with_one_blas_thread
    @torch.inference_mode()
    def impute(
        self,
        adata: AnnData | None = None,
        *,
        target: Literal["missing", "zeros"] | np.ndarray | sp.spmatrix = "missing",
        readout: Literal["ensemble", "network"] = "ensemble",
        n_samples: int = 0,
        sampler: Literal["ddim", "ddpm"] = "ddim",
        genes: Sequence[str] | None = None,
        seed: int | None = None,
        layer_added: str = KEYS.IMPUTED,
        inplace: bool = True,
        return_samples: bool = False,
    ) -> dict[str, np.ndarray] | None:
        """Write the log-normalised data with its entries to fill replaced by the model's estimate.

        Every value is on the log-normalised scale of :func:`stmcdi.pp.normalize` (library from observed
        entries, scaled to the training median, ``log1p``). Observed entries keep their value; each entry to
        fill gets the stacked estimate (``readout="ensemble"``): the network's one-pass estimate and the
        classical estimates, weighted by non-negative least squares on entries held back from training
        (``model.readout_["stack"]``); it takes one network pass per spot. With ``n_samples > 0``,
        ``f"{layer_added}_std"`` gets the spread of that many reverse-diffusion samples around the estimate, scaled
        so that ``estimate ± 1.645 std`` covered 90% of the held-back entries; the samples cost about
        ``10 * n_samples`` network passes per spot.

        Parameters
        ----------
        adata
            AnnData to impute (default: the registered one); a new one must have the same genes in the same order.
        target
            ``"missing"`` (NaN / ``mask_layer`` entries), ``"zeros"`` (also every zero count, "fill the dropouts":
            a zero is then an estimate of what the spot expresses, read from the rest of the data) or a boolean
            ``(n_obs, n_vars)`` array of further entries to treat as missing and fill.
        readout
            ``"ensemble"`` (default) or ``"network"``: the network's one-pass estimate alone.
        n_samples
            Reverse-diffusion samples per spot for the spread (``f"{layer_added}_std"``); the default ``0`` draws
            none and writes the estimate alone. ``5`` or more gives a usable spread. A model trained with
            ``objective="diffusion"`` estimates by sampling and needs ``n_samples >= 1``.
        sampler
            ``"ddim"`` (10 deterministic steps) or ``"ddpm"`` (the paper's ancestral sampler, every step).
        genes
            Optional gene names: return only these columns (needs ``inplace=False``; bounds the output's memory).
        seed
            Seed of the sampling noise and of the zero rounds; default ``scvi.settings.seed``.
        layer_added
            Layer to write.
        inplace
            Write ``adata.layers[layer_added]`` (and ``_std``) and ``adata.uns["stmcdi"]["impute"]``, or return.
        return_samples
            Also return the samples, ``(n_samples, n_obs, n_genes)`` float32 (with ``inplace=False``).

        Returns
        -------
        ``None`` with ``inplace=True``; otherwise a dict with ``"mean"``, ``"std"`` (with samples), ``"samples"``
        (if asked) and ``"genes"``.

        Examples
        --------
        >>> model.impute()  # doctest: +SKIP
        >>> adata.layers["imputed"]  # doctest: +SKIP
        >>> model.impute(n_samples=5)  # also adata.layers["imputed_std"]  # doctest: +SKIP
        """
        from ._imputation import run_imputation

        self._check_if_trained(warn=True)
        adata = self._validate_anndata(adata)
        return run_imputation(self, adata, target=target, readout=readout, n_samples=n_samples, sampler=sampler,
                              genes=genes, seed=seed, layer_added=layer_added, inplace=inplace,
                              return_samples=return_samples)

    @torch.inference_mode()
    def get_latent_representation(self, adata: AnnData | None = None, batch_size: int = 256) -> np.ndarray:
        """The spatial code of each spot: the GCN encoding of its neighbourhood, every observed entry visible.

        Parameters
        ----------
        adata
            AnnData (default: the registered one).
        batch_size
            Spots per batch.

        Returns
        -------
        float32 ``(n_obs, n_latent)`` array, e.g. for ``adata.obsm["X_stmcdi"]`` and :func:`scanpy.pp.neighbors`.

        Examples
        --------
        >>> adata.obsm["X_stmcdi"] = model.get_latent_representation()  # doctest: +SKIP
        """
        self._check_if_trained(warn=True)
        adata = self._validate_anndata(adata)
        manager = self.get_anndata_manager(adata, required=True)
        loader = neighborhood_loader(manager, self.module.n_hops, batch_size=batch_size,
                                     n_expression_neighbors=self.n_expression_neighbors)
        self.module.eval()
        out = [self.module.encode(b[BATCH_KEYS.COUNTS], b[BATCH_KEYS.LIBRARY], b[BATCH_KEYS.EDGE_INDEX],
                                  len(b[BATCH_KEYS.ROW]), b.get(BATCH_KEYS.EXPRESSION_COUNTS),
                                  b.get(BATCH_KEYS.EXPRESSION_LIBRARY)).float().cpu().numpy() for b in loader]
        return np.concatenate(out, axis=0)


def _spot_feature_stats(counts, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd over spots of the summaries of :meth:`STMCDIModule.spot_summary`, all observed entries visible."""
    obs = ~np.isnan(x)
    n = np.maximum(obs.sum(axis=1), 1)
    c = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    c.data = np.nan_to_num(c.data, nan=0.0)
    c = c.multiply(sp.csr_matrix(obs))  # observed entries only
    total = np.asarray(c.sum(axis=1)).ravel()
    detected = np.asarray((c > 0).sum(axis=1)).ravel()
    feats = np.column_stack([np.nansum(x, axis=1, dtype=np.float64) / n, detected / n, np.log1p(total / n)])
    return feats.mean(axis=0).astype(np.float32), feats.std(axis=0).astype(np.float32)


def _check_observed(adata: AnnData, miss: sp.csr_matrix, what: str) -> None:
    n_miss_gene = np.asarray(miss.sum(axis=0)).ravel()
    empty_genes = np.flatnonzero(n_miss_gene == adata.n_obs)
    if empty_genes.size:
        raise ValueError(
            f"{empty_genes.size} genes of {what} have no observed entry (e.g. "
            f"{list(adata.var_names[empty_genes[:3]])}); nothing can be learnt about them. Remove them first."
        )
    empty_spots = int((np.asarray(miss.sum(axis=1)).ravel() == adata.n_vars).sum())
    if empty_spots:
        warnings.warn(f"{empty_spots} spots have no observed entry; they will be imputed from their neighbours "
                      "alone (at the median library size).", UserWarning, stacklevel=3)

