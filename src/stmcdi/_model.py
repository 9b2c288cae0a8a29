"""STMCDI: the user-facing model (AnnData registration, training, imputation, save/load)."""

from __future__ import annotations

import functools
import logging
import math
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
from scvi.dataloaders import AnnDataLoader
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.utils import setup_anndata_dsp

from ._constants import BATCH_KEYS, KEYS, REGISTRY_KEYS
from ._data import NeighborhoodDataSplitter, neighborhood_loader_kwargs, registered_counts
from ._module import DDIM_STEPS, STMCDIModule, draw_targets
from ._training_plan import DiffusionTrainingPlan
from ._validation import check_counts, check_not_view, get_coordinates, get_layer, missing_mask
from .pp._graph import check_neighbor_table, spatial_graph
from .pp._normalize import log_normalize

logger = logging.getLogger(__name__)

Target = Literal["missing", "zeros"]

#: spread scale of a model without calibration entries (chosen on validation entries of two Ståhl sections)
_DEFAULT_SPREAD_SCALE = 1.25
#: Most passes over the data a default training run makes (binds on sections of fewer than ~1000 spots).
_MAX_DEFAULT_EPOCHS = 125

#: Fewest spots for which the default read-out keeps the per-gene read-out of the spatial code with random targets
#: (``STMCDIModule(latent_readout=...)``). On the ~250-spot Stahl sections (125 passes over each spot) it memorised
#: training entries: removed after training, validation per-gene PCC rose 0.057 -> 0.124 and 0.212 -> 0.227. On
#: the 3,639-spot DLPFC section (35 passes) it carried signal: removed, 0.094 -> 0.070 (benchmarks/readout_terms.py,
#: docs/benchmarks.md "The spatial read-out"). The threshold sits where the epoch cap stops binding.
_LATENT_READOUT_MIN_SPOTS = 1000

#: Default reverse-diffusion samples per spot of :meth:`STMCDI.impute` and :meth:`STMCDI.calibrate_spread`. With
#: the hybrid objective the samples give only the spread (the imputed value is the one-pass estimate), and they are
#: most of the imputation's cost. On validation entries (benchmarks/sample_budget.py, seed 0), 10 samples
#: (recalibrated) kept the 90% coverage at 3.7% more CRPS than 20 on both Stahl sections, for half the time.
N_SAMPLES = 10
#: the least factor ``impute(shrink="calibrated")`` takes: a noisy slope near 0 would flatten whole genes
MIN_SHRINK = 0.1
#: steps of the neighbour average in ``impute(smooth=...)`` (:func:`smooth_fills`)
SMOOTH_STEPS = 3
#: default ``smooth`` (over the expression graph) and ``zero_dispersion`` of ``impute(target="zeros")`` on sections
#: of at least ``ZERO_READOUT_MIN_SPOTS`` spots, chosen on ``thin`` validation splits (benchmarks/zero_readouts.py,
#: docs/benchmarks.md): on the 3,639-spot DLPFC section they raised the per-gene PCC of the filled zeros
#: (0.0165 -> 0.0256) and lowered RMSE; on the ~250-spot Stahl sections they lowered RMSE but cost per-gene PCC
#: (0.002-0.006), so smaller sections keep the network's estimate. The threshold is the one of the spatial read-out
#: (``_LATENT_READOUT_MIN_SPOTS``), where the epoch cap stops binding; no section between 250 and 3,639 spots was run.
ZERO_SMOOTH = 0.5
ZERO_DISPERSION = 0.25
ZERO_READOUT_MIN_SPOTS = 1000
#: fewest held-back entries worth calibrating on (a coverage from 100 entries has a standard error of 0.03)
_MIN_CALIBRATION_ENTRIES = 100
#: second word of the calibration draw's seed, so it does not share a random stream with a hold-out split
_CALIBRATION_STREAM = 0x5CA1E
#: candidate spread scales, smallest first
_SPREAD_GRID = np.round(np.arange(0.5, 5.0001, 0.05), 2)
#: weight of the spot depth term at imputation (chosen on validation entries of two Stahl sections)
DEPTH_WEIGHT = 0.75
#: second word of the seed that splits the zeros into rounds (``impute(target="zeros")``)
_ZERO_ROUNDS_STREAM = 0x2E505


class STMCDI(UnsupervisedTrainingMixin, BaseModelClass):
    """Spatial transcriptomics imputation by masked conditional diffusion with a spatial GCN (stMCDI).

    Missing entries (NaN in the registered count layer, or marked by ``mask_layer``) are filled by a
    diffusion model conditioned on the spot's observed entries and on a graph-convolutional encoding of its
    5 nearest spots. Observed entries are never changed.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    encoder
        Spatial encoder: ``"gcn"`` (paper), ``"gat"``, ``"gin"``, ``"mlp"`` (no spatial messages) or
        ``"none"`` (no spatial input).
    n_latent
        Width of the spatial code returned by :meth:`get_latent_representation`.
    n_channels
        Width of the denoiser's tokens.
    n_layers
        Residual blocks of the denoiser.
    attention
        ``"latent"`` (attention through 16 latent tokens; linear in the number of genes, the CPU default)
        or ``"full"`` (self-attention over all tokens; quadratic, for GPUs).
    genes_per_token
        Genes per denoiser token. ``1`` is CSDI's one token per gene; the default 8 groups genes (in
        ``var`` order) so that 1000 genes train ~5x faster on a CPU.
    n_diffusion_steps
        Steps of the quadratic noise schedule.
    mask_ratio
        Fraction of observed entries hidden as training targets: a float, or a ``(low, high)`` range drawn
        per spot.
    n_expression_neighbors
        Nearest spots in expression space (10 principal components of the observed entries,
        ``stmcdi._data.expression_neighbor_table``) whose mean profile conditions each spot
        (``expression_profile`` of :class:`~stmcdi.STMCDIModule`); at most ``n_obs - 1``. ``0`` conditions on
        the spatial neighbours alone, as the paper does. Chosen on validation entries (docs/benchmarks.md,
        "Expression neighbours").
    blind_expression_neighbors
        In training, choose each batch spot's expression neighbours without its training targets
        (``stmcdi._data.ExpressionSpace.query``), as imputation chooses them without the entries it fills.
        ``False`` reads every spot's profile from neighbours chosen on all its observed entries, targets
        included, so that training sees a profile that partly knows the targets (docs/benchmarks.md,
        "Expression neighbours chosen without the targets").
    blind_library
        In training, a batch spot's library size is the sum of its counts that are not training targets,
        as at imputation, where it holds the observed counts only and the held-out truth is scaled by it.
        ``False`` scales a spot's targets and condition by its full observed library, which contains the
        targets.
    depth_weight
        Weight of the spot depth term added to every filled entry at imputation (``depth_weight`` of
        :class:`~stmcdi.STMCDIModule`: the spot's mean observed log-normalised value, centred, times this
        weight), in ``layers["imputed"]`` only: the samples and their spread are not moved. The network,
        trained with 10-90% of each spot hidden, leans on a spot's depth less than it should at imputation,
        where 90% or more is visible. ``0`` imputes the network's output alone. The default was chosen on
        validation entries (docs/benchmarks.md, "The spot depth term"); ``model.module.depth_weight`` can be
        changed after training.
    **module_kwargs
        Further :class:`~stmcdi.STMCDIModule` arguments (``mask_strategy``, ``input_mask``,
        ``representation_mask_ratio``, ``n_encoder_layers``, ``beta_end``, ``readout_init``, ``latent_readout``, ...), and
        ``n_gene_groups``. ``latent_readout`` left at ``None`` is ``True`` on sections of at least 1000 spots
        (where the per-gene read-out of the spatial code carried signal on validation entries) and otherwise
        follows the module's default (only with ``mask_strategy="nonzero"``). ``n_gene_groups``: with ``> 0``,
        the module's ``gene_groups`` are that many groups of genes of equal size by detected fraction
        (``stmcdi._model.detection_groups``, from the observed entries; off by default, see docs/benchmarks.md).

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=100, n_genes=30)
    >>> stmcdi.pp.spatial_graph(adata)
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
        genes_per_token: int = 8,
        n_diffusion_steps: int = 50,
        mask_ratio: float | Sequence[float] = (0.1, 0.9),
        n_expression_neighbors: int = 20,
        blind_expression_neighbors: bool = True,
        blind_library: bool = False,
        depth_weight: float = DEPTH_WEIGHT,
        **module_kwargs,
    ):
        super().__init__(adata, registry)
        if isinstance(n_expression_neighbors, bool) or not isinstance(n_expression_neighbors, int | np.integer) \
                or n_expression_neighbors < 0:
            raise ValueError(
                f"n_expression_neighbors must be a non-negative integer, got {n_expression_neighbors!r}; 0 turns "
                "the expression neighbours off."
            )
        #: expression neighbours each batch carries (capped at n_obs - 1)
        self.n_expression_neighbors = int(min(n_expression_neighbors, self.summary_stats.n_cells - 1))
        #: training chooses the expression neighbours without the batch spots' targets
        self.blind_expression_neighbors = bool(blind_expression_neighbors)
        #: training scales each batch spot by the library of its non-target counts
        self.blind_library = bool(blind_library)
        counts, mask = registered_counts(self.adata_manager)
        x, _, target_sum = log_normalize(counts, missing_mask(counts, mask))
        mean, std = _gene_stats(x)
        gene_max = np.nanmax(x, axis=0)
        mask_ratio = tuple(mask_ratio) if not np.isscalar(mask_ratio) else float(mask_ratio)
        kwargs = dict(module_kwargs)  # the saved init parameters keep the user's arguments only
        kwargs["expression_profile"] = self.n_expression_neighbors > 0
        kwargs["depth_weight"] = depth_weight
        if (kwargs.get("spot_features", True) or depth_weight) and kwargs.get("spot_feature_stats") is None:
            kwargs["spot_feature_stats"] = _spot_feature_stats(counts, x)
        if kwargs.get("latent_readout") is None and self.summary_stats.n_cells >= _LATENT_READOUT_MIN_SPOTS:
            kwargs["latent_readout"] = True  # large sections: the spatial code's read-out is not memorising
        n_gene_groups = kwargs.pop("n_gene_groups", 0)
        if n_gene_groups and kwargs.get("gene_groups") is None:
            kwargs["gene_groups"] = detection_groups(x, int(n_gene_groups))
        self.module = self._module_cls(
            n_genes=self.summary_stats.n_vars,
            gene_mean=mean,
            gene_std=std,
            target_sum=target_sum,
            gene_max=gene_max,
            encoder=encoder,
            n_latent=n_latent,
            n_channels=n_channels,
            n_layers=n_layers,
            attention=attention,
            genes_per_token=genes_per_token,
            n_diffusion_steps=n_diffusion_steps,
            mask_ratio=mask_ratio,
            **kwargs,
        )
        n_nb = self.summary_stats.get(f"n_{REGISTRY_KEYS.NEIGHBORS_KEY}", 0) - 1
        self._model_summary_string = (
            f"STMCDI model: {self.summary_stats.n_vars} genes, {n_nb} spatial neighbours, encoder={encoder}, "
            f"n_latent={n_latent}, n_channels={n_channels}, n_layers={n_layers}, attention={attention}, "
            f"genes_per_token={genes_per_token}, "
            f"diffusion steps={n_diffusion_steps}, mask_ratio={mask_ratio}, "
            f"expression neighbours={self.n_expression_neighbors}"
        )
        #: held-back calibration entries (boolean sparse matrix), the chosen spread scale and its record
        self.calibration_entries_: sp.csr_matrix | None = None
        self.spread_scale_: float | None = None
        self.spread_calibration_: dict | None = None
        self.init_params_ = self._get_init_params(locals())
        if module_kwargs.get("latent_readout") is None and "latent_readout" in kwargs:
            # derived from the section size: saved, so that loading onto another AnnData rebuilds the same read-out
            self.init_params_["kwargs"]["module_kwargs"]["latent_readout"] = kwargs["latent_readout"]

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
        entries are NaN in the count layer, or nonzero in ``mask_layer``. If the neighbour table is absent
        it is built with :func:`stmcdi.pp.spatial_graph` (5 nearest spots); an existing table is checked,
        never rebuilt, so calling this again (as :meth:`load` does) is cheap and changes nothing.

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
        ``None``. Registers ``adata`` with the model class; may write the graph keys of
        :func:`stmcdi.pp.spatial_graph`.

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
        X = get_layer(adata, layer)
        mask = get_layer(adata, mask_layer) if mask_layer is not None else None
        what = f"adata.layers[{layer!r}]" if layer else "adata.X"
        miss = missing_mask(X, mask)
        check_counts(X, miss, what)
        _check_observed(adata, miss, what)
        get_coordinates(adata, spatial_key)
        if neighbors_key not in adata.obsm:
            logger.info("adata.obsm[%r] not found: building the 5-nearest-neighbour graph.", neighbors_key)
            spatial_graph(adata, n_neighs=5, spatial_key=spatial_key, table_key=neighbors_key)
        check_neighbor_table(adata, neighbors_key)

        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            ObsmField(REGISTRY_KEYS.NEIGHBORS_KEY, neighbors_key),
        ]
        if mask_layer is not None:
            fields.append(LayerField(REGISTRY_KEYS.MISSING_KEY, mask_layer, is_count_data=False))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True) -> AnnData:
        # Check every AnnData other than the registered one, including copies of it: scvi-tools recognises a
        # copy by its uuid and transfers the setup, and a subset copy carries a stale neighbour table.
        if adata is not None and adata is not self.adata:
            check_not_view(adata, "STMCDI")
            args = self.registry_["setup_args"]
            trained = np.asarray(self.registry_["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]
                                 ["column_names"])
            if adata.n_vars != trained.size or not np.array_equal(np.asarray(adata.var_names), trained):
                raise ValueError(
                    f"This AnnData has {adata.n_vars} genes that differ from the {trained.size} the model was "
                    "trained on. Subset and order it first: `adata = adata[:, model.adata.var_names].copy()` "
                    "(or use the genes saved with the model)."
                )
            if args["neighbors_key"] not in adata.obsm:
                spatial_graph(adata, n_neighs=5, spatial_key=args["spatial_key"], table_key=args["neighbors_key"])
            check_neighbor_table(adata, args["neighbors_key"])
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    @classmethod
    def load(cls, dir_path: str, adata: AnnData | None = None, **kwargs):
        """Load a saved model (scvi-tools' :meth:`~scvi.model.base.BaseModelClass.load`), checking genes first.

        scvi-tools only warns when ``adata`` has other genes than the saved model and then loads weights
        that belong to different genes; this refuses instead.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            AnnData to attach; must have the saved genes, in the saved order. ``None`` uses the AnnData
            saved with the model, if any.
        **kwargs
            ``accelerator``, ``device``, ``prefix``, ... of scvi-tools' ``load``.

        Returns
        -------
        The loaded :class:`STMCDI`.

        Examples
        --------
        >>> model = stmcdi.STMCDI.load("my_model/", adata=adata)  # doctest: +SKIP
        """
        if adata is not None:
            from scvi.model.base._save_load import _load_saved_files

            _, var_names, _, _ = _load_saved_files(dir_path, load_adata=False, prefix=kwargs.get("prefix"),
                                                   map_location="cpu")
            if not np.array_equal(np.asarray(adata.var_names), np.asarray(var_names)):
                raise ValueError(
                    f"This AnnData's {adata.n_vars} genes differ from the {len(var_names)} the model in {dir_path} "
                    "was trained on. Subset and order it first: `adata = adata[:, genes].copy()` with `genes = "
                    "STMCDI.load_registry(dir_path)['field_registries']['X']['state_registry']['column_names']`."
                )
        return super().load(dir_path, adata=adata, **kwargs)

    # ----------------------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        load_sparse_tensor: bool = False,
        batch_size: int = 64,
        early_stopping: bool = False,
        datasplitter_kwargs: dict | None = None,
        plan_config: dict | None = None,
        plan_kwargs: dict | None = None,
        datamodule=None,
        trainer_config: dict | None = None,
        ema_decay: float | None = 0.995,
        max_steps_default: int = 2000,
        calibration_entries: int = 2000,
        calibration_spots: int = 256,
        **trainer_kwargs,
    ):
        """Train the model (scvi-tools' :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train`).

        Parameters
        ----------
        max_epochs
            Passes through the data. Default: enough epochs for about ``max_steps_default`` optimizer
            steps, between 10 and 125. The cap binds on small sections: on validation entries of the two
            ~250-spot Ståhl sections, 500 optimizer steps (100-125 epochs) gave better point estimates than
            2000 (per-gene PCC 0.218 against 0.212 and 0.047 against 0.007), the extra passes fitting noise
            (docs/benchmarks.md, "Training length"). Sections of more than ~1000 spots still get about
            ``max_steps_default`` steps.
        accelerator
            ``"auto"``, ``"cpu"``, ``"gpu"``, ... (Lightning).
        devices
            Devices to use; ``"auto"`` uses one GPU. For several GPUs pass ``devices=-1`` and
            ``strategy="ddp_find_unused_parameters_true"`` (``"ddp_notebook_find_unused_parameters_true"``
            in Jupyter).
        train_size
            Fraction of spots used as training seeds. Default: all spots (``1.0``) without early stopping,
            ``0.9`` with it (the rest validates). Every spot is always available as a neighbour.
        validation_size
            Fraction of spots for validation (default: the rest).
        shuffle_set_split
            Shuffle spots before splitting (seeded by ``scvi.settings.seed``).
        load_sparse_tensor
            Unused (batches are assembled by the neighbourhood collate); kept for API compatibility.
        batch_size
            Spots per minibatch (each brings its 3-hop neighbourhood).
        early_stopping
            Stop when ``validation_loss`` stops improving (``early_stopping_patience`` etc. pass through).
        datasplitter_kwargs
            Extra arguments of the neighbourhood ``DataSplitter`` (``n_hops``, ``pin_memory``...).
        plan_config, plan_kwargs
            Arguments of :class:`~stmcdi.DiffusionTrainingPlan` (``lr``, ``weight_decay``, ``lr_schedule``...).
        datamodule
            Not supported (neighbourhoods need the registered AnnData).
        trainer_config
            Arguments of :class:`~scvi.train.Trainer`.
        ema_decay
            Decay of the exponential moving average of the weights (Lightning's
            :class:`~lightning.pytorch.callbacks.EMAWeightAveraging`); the averaged weights replace the raw
            ones at the end of training. ``None`` disables it. On short runs the decay is lowered to
            ``1 - 10 / total_steps`` so that the average forgets its random start.
        max_steps_default
            Target number of optimizer steps when ``max_epochs`` is ``None``.
        calibration_entries
            Number of observed entries held back from training, drawn at random in ``calibration_spots``
            random spots (nonzero entries only with ``mask_strategy="nonzero"``; at most a tenth of those
            spots' candidate entries). After training the model imputes them and :meth:`calibrate_spread` sets
            the spread scale so that the 90% central interval of the samples covers 90% of them: the spread
            is calibrated on the user's own data, on entries the model never saw (2000 entries give the
            coverage to about ±0.007). ``0`` trains on every observed entry and keeps the fixed scale 1.25
            (also used when fewer than 100 entries can be held back). The held-back entries stay observed
            for imputation.
        calibration_spots
            Number of spots the calibration entries are drawn from (all spots if the section has fewer);
            bounds the cost of the calibration pass on large sections.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (``callbacks``, ``precision="bf16-mixed"``, ``strategy``,
            ``enable_progress_bar``...).

        Returns
        -------
        ``None``; ``model.history`` holds the logged losses, ``model.spread_scale_`` the calibrated spread
        scale and ``model.spread_calibration_`` its record (see :meth:`calibrate_spread`).

        Examples
        --------
        >>> model.train(max_epochs=200, accelerator="gpu")  # doctest: +SKIP
        """
        if datamodule is not None:
            raise ValueError("STMCDI trains from the registered AnnData; `datamodule` is not supported.")
        if train_size is None:
            train_size = 0.9 if early_stopping else 1.0
        n_train = max(1, math.ceil(train_size * self.adata.n_obs))
        steps_per_epoch = math.ceil(n_train / batch_size)
        if max_epochs is None:
            max_epochs = int(np.clip(round(max_steps_default / steps_per_epoch), 10, _MAX_DEFAULT_EPOCHS))
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])  # fresh list: scvi appends to it
        if ema_decay is not None:
            total = max_epochs * steps_per_epoch
            decay = min(float(ema_decay), 1.0 - 10.0 / max(total, 20))
            callbacks.append(EMAWeightAveraging(decay=decay, use_buffers=False))
        datasplitter_kwargs = dict(datasplitter_kwargs or {})
        datasplitter_kwargs.setdefault("n_hops", self.module.n_hops)
        datasplitter_kwargs.setdefault("n_expression_neighbors", self.n_expression_neighbors)
        if self.blind_library or (self.blind_expression_neighbors and self.n_expression_neighbors > 0):
            datasplitter_kwargs.setdefault("target_sampler", functools.partial(
                draw_targets, mask_strategy=self.module.mask_strategy, mask_ratio=self.module.mask_ratio))
            datasplitter_kwargs.setdefault("neighbors_without_targets", self.blind_expression_neighbors)
            datasplitter_kwargs.setdefault("library_without_targets", self.blind_library)
        if isinstance(calibration_entries, bool) or not isinstance(calibration_entries, int | np.integer) \
                or calibration_entries < 0:
            raise ValueError(
                f"calibration_entries must be a non-negative integer, got {calibration_entries!r}; 0 disables the "
                "calibration."
            )
        if calibration_entries > 0 and self.calibration_entries_ is None:  # a second train() keeps them
            self.calibration_entries_ = self._calibration_entries(int(calibration_entries), int(calibration_spots))
        elif calibration_entries == 0:
            self.calibration_entries_ = None
        if self.calibration_entries_ is not None:
            datasplitter_kwargs.setdefault("extra_missing", self.calibration_entries_)
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1 if (early_stopping or train_size < 1) else None)
        # Lightning warns when an epoch has fewer batches than its logging interval (small sections)
        trainer_kwargs.setdefault("log_every_n_steps", max(1, min(50, steps_per_epoch)))
        if early_stopping:  # scvi's Trainer monitors the VAE's "elbo_validation" by default
            trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*Last batch will have a small size.*")
            super().train(
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                train_size=train_size,
                validation_size=validation_size,
                shuffle_set_split=shuffle_set_split,
                load_sparse_tensor=False,
                batch_size=batch_size,
                early_stopping=early_stopping,
                datasplitter_kwargs=datasplitter_kwargs,
                plan_config=plan_config,
                plan_kwargs=plan_kwargs,
                trainer_config=trainer_config,
                callbacks=callbacks,
                **trainer_kwargs,
            )
        if self.calibration_entries_ is not None:
            self.calibrate_spread()
        else:
            self.spread_scale_, self.spread_calibration_ = None, None

    def _calibration_entries(self, n_entries: int, n_spots: int) -> sp.csr_matrix | None:
        """Draw the entries held back from training for :meth:`calibrate_spread` (``None`` if too few)."""
        counts, mask = registered_counts(self.adata_manager)
        miss = missing_mask(counts, mask)
        n_obs, n_vars = self.adata.shape
        seed = 0 if settings.seed is None else int(settings.seed)
        rng = np.random.default_rng([seed, _CALIBRATION_STREAM])  # not the stream of a seed-`seed` hold-out
        spots = np.sort(rng.choice(n_obs, size=min(n_obs, max(1, n_spots)), replace=False))
        x = counts[spots]
        x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
        candidates = ~miss[spots].toarray() & ~np.isnan(x)
        if self.module.mask_strategy == "nonzero":
            candidates &= x > 0
        rows, cols = np.nonzero(candidates)
        n = min(n_entries, rows.size // 10)  # never more than a tenth of the candidates
        if n < _MIN_CALIBRATION_ENTRIES:
            logger.info("Only %d entries could be held back for calibration; keeping the fixed spread scale %g.",
                        n, _DEFAULT_SPREAD_SCALE)
            return None
        pick = np.sort(rng.choice(rows.size, size=n, replace=False))
        rows, cols = rows[pick], cols[pick]
        data = np.ones(rows.size, dtype=bool)
        return sp.csr_matrix((data, (spots[rows], cols)), shape=(n_obs, n_vars))

    def _sampler_key(self, n_samples: int, sampler: str, n_steps: int | None) -> tuple:
        """The sampler settings that change the samples (DDIM's default steps resolved; DDPM has no steps)."""
        if sampler == "ddpm":
            return int(n_samples), sampler, None
        return int(n_samples), sampler, int(n_steps or min(DDIM_STEPS, self.module.n_diffusion_steps))

    @torch.inference_mode()
    def calibrate_spread(
        self,
        level: float = 0.9,
        *,
        n_samples: int = N_SAMPLES,
        sampler: Literal["ddim", "ddpm"] = "ddim",
        n_steps: int | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
    ) -> dict:
        """Choose the spread scale on the entries held back from training.

        :meth:`train` holds back a few observed entries (``calibration_entries``) and calls this method
        when training ends. The model samples those entries as if they were missing; the scale ``s`` on the
        samples' deviations from their mean (see ``spread_scale`` of :meth:`impute`) is set to the smallest
        value in ``0.5, 0.55, ..., 5`` whose central ``level`` interval covers at least ``level`` of them.
        Call it again to calibrate for other sampler settings than :meth:`impute`'s defaults.

        Parameters
        ----------
        level
            Nominal coverage of the central interval to calibrate, in ``(0, 1)``.
        n_samples, sampler, n_steps, batch_size
            As in :meth:`impute`; use the settings you will impute with.
        seed
            Seed of the sampling noise; default ``scvi.settings.seed``.

        Returns
        -------
        The record also stored in ``model.spread_calibration_``: ``spread_scale`` (also stored in
        ``model.spread_scale_``, the default of :meth:`impute`), ``level``, ``n_entries``,
        ``coverage_unscaled`` (coverage of the samples as drawn) and ``coverage`` (at the chosen scale),
        and the sampler settings.

        Examples
        --------
        >>> model.train()  # doctest: +SKIP
        >>> model.spread_calibration_["coverage_unscaled"], model.spread_scale_  # doctest: +SKIP
        >>> model.calibrate_spread(n_samples=50)  # before impute(n_samples=50)  # doctest: +SKIP
        """
        self._check_if_trained(warn=True)
        entries = self.calibration_entries_
        if entries is None:
            raise ValueError(
                "This model holds back no calibration entries (trained with calibration_entries=0, or too few "
                "observed entries); pass `spread_scale` to impute() instead."
            )
        if entries.shape != self.adata.shape:
            raise ValueError(
                f"The calibration entries have shape {entries.shape} but the model's AnnData is {self.adata.shape}; "
                "calibrate with the AnnData the model was trained on, or pass `spread_scale` to impute()."
            )
        if not 0.0 < level < 1.0:
            raise ValueError(f"`level` must lie in (0, 1), got {level!r}.")
        if batch_size is None:
            batch_size = max(1, (640 if self.device.type != "cpu" else 160) // n_samples)
        rows_all, cols = entries.nonzero()
        spots = np.unique(rows_all)
        manager = self.get_anndata_manager(self.adata, required=True)
        kwargs = neighborhood_loader_kwargs(manager, self.module.n_hops, extra_missing=entries,
                                            n_expression_neighbors=self.n_expression_neighbors)
        loader = AnnDataLoader(manager, indices=spots, batch_size=batch_size, shuffle=False, **kwargs)
        library = kwargs["collate_fn"].library  # without the held-back entries, as the model sees them
        counts, _ = registered_counts(manager)
        values = np.asarray(sp.csr_matrix(counts)[rows_all, cols], dtype=np.float64).ravel()
        lib = library[rows_all].astype(np.float64)
        scale = np.divide(float(self.module.target_sum), lib, out=np.zeros_like(lib), where=lib > 0)
        truth = np.log1p(values * scale)
        seed = settings.seed if seed is None else seed
        gen = torch.Generator().manual_seed(int(seed if seed is not None else 0))
        draws = np.empty((n_samples, rows_all.size), dtype=np.float32)
        estimate = np.empty(rows_all.size, dtype=np.float32)
        where = np.full(self.adata.n_obs, -1, dtype=np.int64)
        self.module.eval()
        for batch in loader:
            rows = batch["row"].numpy()
            out = self.module.sample(
                batch["counts"], batch["library"], batch["edge_index"], len(rows),
                n_samples=n_samples, sampler=sampler, n_steps=n_steps, generator=gen, **_expression_inputs(batch),
            ).float().cpu()
            point = self._point_estimate(batch, out)
            out = out.numpy()
            where[:] = -1
            where[rows] = np.arange(rows.size)
            sel = where[rows_all] >= 0
            draws[:, sel] = out[:, where[rows_all[sel]], cols[sel]]
            estimate[sel] = point[where[rows_all[sel]], cols[sel]]
        chosen, coverage, unscaled = _choose_spread_scale(truth, draws, level)
        slope = within_gene_slope(truth, estimate, cols)
        record = {
            "spread_scale": chosen, "level": float(level), "n_entries": int(truth.size),
            "coverage_unscaled": unscaled, "coverage": coverage,
            "n_samples": int(n_samples), "sampler": sampler, "n_steps": n_steps,
            "within_gene_slope": slope, "shrink": float(np.clip(slope, MIN_SHRINK, 1.0)) if np.isfinite(slope) else 1.0,
        }
        logger.info(
            "Spread calibrated on %d held-back entries: the %g%% interval covered %.3f as drawn, %.3f at scale %.2f; "
            "within-gene slope of the truth on the estimate %.3f.",
            truth.size, 100 * level, unscaled, coverage, chosen, slope,
        )
        self.spread_scale_ = chosen
        self.spread_calibration_ = record
        return dict(record)

    # ----------------------------------------------------------------------------- outputs
    def _neighborhood_loader(
        self, adata: AnnData, batch_size: int, zeros_missing: bool = False, extra_missing=None, fill=None,
    ) -> AnnDataLoader:
        manager = self.get_anndata_manager(adata, required=True)
        kwargs = neighborhood_loader_kwargs(manager, self.module.n_hops, zeros_missing, extra_missing,
                                            self.n_expression_neighbors, fill)
        return AnnDataLoader(manager, indices=None, batch_size=batch_size, shuffle=False, **kwargs)

    @torch.inference_mode()
    def impute(
        self,
        adata: AnnData | None = None,
        *,
        n_samples: int = N_SAMPLES,
        sampler: Literal["ddim", "ddpm"] = "ddim",
        n_steps: int | None = None,
        target: Target | np.ndarray | sp.spmatrix = "missing",
        batch_size: int | None = None,
        seed: int | None = None,
        layer_added: str = KEYS.IMPUTED,
        inplace: bool = True,
        return_samples: bool = False,
        spread_scale: float | None = None,
        zero_rounds: int = 2,
        zero_dispersion: float | None = None,
        shrink: float | Literal["calibrated"] | None = None,
        smooth: float | None = None,
        smooth_neighbors: int = 40,
        smooth_graph: Literal["spatial", "expression"] = "expression",
    ) -> dict[str, np.ndarray] | None:
        """Fill missing entries by reverse diffusion and write them to ``adata.layers``.

        Every value is on the log-normalised scale (:func:`stmcdi.pp.normalize`: library size from observed
        entries, scaled to the training median, ``log1p``). Observed entries keep their own value; the
        entries to fill get the mean of ``n_samples`` reverse-diffusion samples, each started from Gaussian
        noise and conditioned on the spot's observed entries and its neighbourhood's spatial code. A model
        trained with ``objective="hybrid"`` writes its one-pass point estimate
        (:meth:`~stmcdi.STMCDIModule.predict`) instead of the samples' mean; the samples still give the sd.

        Parameters
        ----------
        adata
            AnnData to impute (default: the registered one). A new AnnData must have the same genes; its
            neighbour table is built if absent.
        n_samples
            Samples per spot (default 10); when ``n_samples > 1`` their sd goes to ``f"{layer_added}_std"``.
            The default hybrid models write their one-pass estimate to ``layer_added``, which the samples do not
            change; models trained with ``objective="diffusion"`` write the samples' mean, which carries
            Monte-Carlo noise of variance ``spread**2 / n_samples`` (4 samples cost the mouse olfactory bulb 0.03
            in RMSE against 20 there). On validation entries, 10 samples instead of 20 cost 3.7% in CRPS at half
            the time (``benchmarks/sample_budget.py``).
        sampler
            ``"ddim"`` (deterministic, ``n_steps`` steps; default) or ``"ddpm"`` (the paper's ancestral
            sampler over every diffusion step).
        n_steps
            DDIM steps (default 10); ignored by ``"ddpm"``.
        target
            Which entries to fill: ``"missing"`` (NaN / ``mask_layer`` entries), ``"zeros"`` (missing entries
            and every zero count, "fill the dropouts", in ``zero_rounds`` rounds), or a boolean
            ``(n_obs, n_vars)`` array of entries to fill (in addition to the missing ones, all at once).
            A boolean ``target`` is hidden from the encoder and the condition everywhere, exactly as missing
            entries are, so it also leaves the library size of its spot. A zero to fill is hidden only from
            its own spot's condition and encoder input: as a neighbour, in the graph or in expression space,
            a spot shows its zeros, as every spot shows its observed entries in training; its spot summaries
            read every observed entry, zeros included.
        zero_rounds
            With ``target="zeros"``: the zero counts are split at random into this many groups, and each
            group is filled in its own pass with every other entry, zeros included, visible. The model trains
            with 10-90% of a spot's entries hidden at random; hiding every zero at once (``1``) is most of the
            matrix on shallow data and tells the model nothing about where the zeros were. On validation
            entries of the mouse olfactory bulb (``benchmarks/zeros_rounds.py``) two rounds raised the per-gene
            PCC of the filled zeros from 0.040 to 0.061 and lowered RMSE from 0.262 to 0.249. Each round
            costs one imputation pass.
        zero_dispersion
            With ``target="zeros"``: condition the point estimate of each filled zero on its zero count
            (:func:`~stmcdi.zero_conditioned`, a gamma-Poisson posterior with squared coefficient of variation
            ``zero_dispersion``); ``0`` fills a zero with the estimate the entry would get had it not been seen.
            Applied last, after ``smooth`` and ``shrink``. The samples (and ``std``) are not moved. Default
            (``None``): 0.25 on sections of at least 1000 spots, 0 on smaller ones (see ``smooth``). On ``thin``
            validation entries of the Ståhl sections, 0.25 alone lowered RMSE by 0.0005-0.003 at a per-gene PCC
            within 0.003 (``benchmarks/thin_rmse_terms.py``).
        shrink
            Factor on each filled entry's deviation from its gene's mean fill (over the entries this call fills;
            :func:`~stmcdi.shrink_within_genes`), applied before ``zero_dispersion``. ``"calibrated"`` takes the
            within-gene slope of the truth on the estimate of the entries held back from training
            (``model.spread_calibration_["shrink"]``, :func:`~stmcdi.within_gene_slope`, clipped to
            ``[0.1, 1]`` so that no gene is flattened to a constant; a slope of 1 or more leaves the fill as it
            is). ``1`` keeps the estimate. Default (``None``): ``"calibrated"`` with ``target="zeros"`` (``1`` for
            a model without calibration entries), ``1`` otherwise. A positive factor changes no per-gene
            correlation of the fills; their RMSE moves, and so do spatial statistics of the layer, since only the
            fills move (towards their gene's mean fill). The samples (and ``std``) are not moved. See the
            Benchmarks page, "The calibrated shrink as the default for filled zeros".
        smooth
            Weight in ``[0, 1]`` of the neighbourhood in each filled entry (:func:`~stmcdi.smooth_fills`):
            the fill moves to ``(1 - smooth) x + smooth (P^3 x)``, ``P`` the average over the spot and its
            ``smooth_neighbors`` nearest spots (``smooth_graph``; observed values and fills), then each gene's
            fills are moved back by one constant to their mean before smoothing. Applied first, before ``shrink``
            and ``zero_dispersion``; observed entries are inputs and are not moved, nor are the samples (and
            ``std``). Default (``None``): 0.5 with ``target="zeros"`` on sections of at least 1000 spots, 0 (off)
            on smaller sections and for missing entries. Chosen on ``thin`` validation splits
            (``benchmarks/zero_readouts.py``): on the DLPFC section (3,639 spots, 1000 HVGs) smoothing over the
            expression graph with ``zero_dispersion=0.25`` and the calibrated shrink raised the per-gene PCC of
            the filled zeros from 0.0165 to 0.0256 and lowered RMSE from 0.1117 to 0.1112; on the ~250-spot
            Ståhl sections (two panels each, two seeds) it lowered RMSE but cost 0.002-0.006 in per-gene PCC.
            Smoothing moves spatial statistics of the layer: on the DLPFC section, with 100 genes permuted
            across spots (no spatial pattern), the expression graph called 26% of them spatially autocorrelated
            (FDR < 0.05, :func:`squidpy.gr.spatial_autocorr`), 18% with the calibrated shrink (the default
            on large sections), against 22% without smoothing, 21% for MAGIC and 19% at full depth; the tissue
            graph (``smooth_graph="spatial"``) called 64% (``benchmarks/spatial_stats.py``). See the Benchmarks
            page, "Smoothing the filled zeros over expression neighbours".
        smooth_neighbors
            Spots averaged with each spot by ``smooth`` (default 40; capped at ``n_obs - 1``). With the tissue
            graph, sections named by the ``library_key`` of :func:`stmcdi.pp.spatial_graph` are kept apart.
        smooth_graph
            Which spots ``smooth`` averages over: ``"expression"`` (default), the nearest in expression space,
            the first 50 principal components of the estimate before smoothing (observed values and fills;
            :func:`~stmcdi.expression_neighbors`), as MAGIC averages over an expression graph; sections are not
            kept apart. ``"spatial"``, the nearest in ``obsm[spatial_key]``: it adds spatial structure by
            construction, so that Moran's I of the layer partly measures the smoothing (64% of permuted genes
            called on the DLPFC section, above).
        batch_size
            Spots per batch. Default ``max(1, 160 // n_samples)`` on a CPU and ``max(1, 640 // n_samples)`` on
            an accelerator: memory and time scale with ``batch_size * n_samples * n_genes``, and on a 2-core
            CPU, imputing 320 DLPFC spots with 20 samples took 48.5 s in batches of 8, 71.7 s in batches of 32
            and 124 s in batches of 128 (``benchmarks/dlpfc_cost.py``).
        seed
            Seed of the sampling noise; default ``scvi.settings.seed``. Same seed, same values.
        layer_added
            Layer to write.
        inplace
            Write the layers (``True``) or return them.
        return_samples
            Also return the samples (``(n_samples, n_obs, n_vars)`` float32) in the returned dict.
        spread_scale
            Factor on every sample's deviation from the samples' mean, per entry (values kept at 0 or
            above; the mean written is computed before scaling). Default: ``model.spread_scale_``, chosen by
            :meth:`calibrate_spread` at the end of training on entries held back from it; called with other
            ``n_samples``, ``sampler`` or ``n_steps`` than that calibration, ``impute`` first recalibrates for
            them (and stores the new scale). 1.25 for a model without calibration entries
            (``train(calibration_entries=0)``). The reverse diffusion draws too
            narrow a distribution: its 90% central interval held 78% of validation entries on the mouse
            olfactory bulb and 66% on the breast-cancer section (``benchmarks/tune.py``). ``1.0`` keeps the
            samples as drawn.

        Returns
        -------
        With ``inplace=True`` and ``return_samples=False``, ``None``; writes ``adata.layers[layer_added]``
        (float32, dense) and ``adata.layers[f"{layer_added}_std"]`` (0 at observed entries). Otherwise a dict
        with ``"mean"``, ``"std"`` and, if asked, ``"samples"``.

        Examples
        --------
        >>> model.impute(n_samples=10)  # doctest: +SKIP
        >>> adata.layers["imputed"]  # doctest: +SKIP
        """
        self._check_if_trained(warn=True)
        adata = self._validate_anndata(adata)
        if not isinstance(n_samples, int | np.integer) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        if spread_scale is None:
            cal = self.spread_calibration_
            if cal is not None and self.calibration_entries_ is not None and (
                self._sampler_key(cal["n_samples"], cal["sampler"], cal["n_steps"])
                != self._sampler_key(n_samples, sampler, n_steps)
            ):
                logger.info("Recalibrating the spread for n_samples=%s, sampler=%r, n_steps=%s.",
                            n_samples, sampler, n_steps)
                self.calibrate_spread(cal["level"], n_samples=int(n_samples), sampler=sampler, n_steps=n_steps,
                                      seed=seed)
            spread_scale = self.spread_scale_ if self.spread_scale_ is not None else _DEFAULT_SPREAD_SCALE
        if not (np.isfinite(spread_scale) and spread_scale > 0):
            raise ValueError(f"spread_scale must be a positive number, got {spread_scale!r}.")
        if isinstance(zero_rounds, bool) or not isinstance(zero_rounds, int | np.integer) or zero_rounds < 1:
            raise ValueError(f"zero_rounds must be a positive integer, got {zero_rounds!r}.")
        zeros_missing = isinstance(target, str) and target == "zeros"
        # the defaults of the filled zeros on large sections; missing entries keep the network's estimate
        zero_readout = zeros_missing and adata.n_obs >= ZERO_READOUT_MIN_SPOTS
        if zero_dispersion is None:
            zero_dispersion = ZERO_DISPERSION if zero_readout else 0.0
        if smooth is None:
            smooth = ZERO_SMOOTH if zero_readout else 0.0
        if isinstance(zero_dispersion, bool) or not (
                isinstance(zero_dispersion, int | float | np.floating | np.integer) and np.isfinite(zero_dispersion)
                and zero_dispersion >= 0):
            raise ValueError(f"zero_dispersion must be a non-negative number, got {zero_dispersion!r}.")
        if shrink is None:  # the default: the calibrated shrink for the zeros, none for missing entries
            calibrated = self.spread_calibration_ is not None and "shrink" in self.spread_calibration_
            shrink = "calibrated" if zeros_missing and calibrated else 1.0
        if isinstance(shrink, str):
            if shrink != "calibrated":
                raise ValueError(f"shrink must be a number in [0, 1] or 'calibrated', got {shrink!r}.")
            cal = self.spread_calibration_
            if cal is None or "shrink" not in cal:
                raise ValueError(
                    "shrink='calibrated' needs the calibration of a model trained with calibration entries "
                    "(train(calibration_entries=2000), the default) or model.calibrate_spread(); pass a number instead."
                )
            shrink = float(cal["shrink"])
        elif isinstance(shrink, bool) or not isinstance(shrink, int | float | np.floating | np.integer) \
                or not (np.isfinite(shrink) and 0.0 <= shrink <= 1.0):
            raise ValueError(f"shrink must be a number in [0, 1] or 'calibrated', got {shrink!r}.")
        if isinstance(smooth, bool) or not isinstance(smooth, int | float | np.floating | np.integer) \
                or not (np.isfinite(smooth) and 0.0 <= smooth <= 1.0):
            raise ValueError(f"smooth must be a number in [0, 1], got {smooth!r}.")
        if isinstance(smooth_neighbors, bool) or not isinstance(smooth_neighbors, int | np.integer) \
                or smooth_neighbors < 1:
            raise ValueError(f"smooth_neighbors must be a positive integer, got {smooth_neighbors!r}.")
        if smooth_graph not in ("spatial", "expression"):
            raise ValueError(f"smooth_graph must be 'spatial' or 'expression', got {smooth_graph!r}.")
        extra = None
        if not isinstance(target, str):
            extra = sp.csr_matrix(target).astype(bool)
            if extra.shape != adata.shape:
                raise ValueError(f"`target` has shape {extra.shape}; expected {adata.shape}.")
        elif target not in ("missing", "zeros"):
            raise ValueError(f"target must be 'missing', 'zeros' or a boolean array, got {target!r}.")

        if batch_size is None:  # small batches are faster on a CPU (cache), larger ones fill a GPU
            batch_size = max(1, (640 if self.device.type != "cpu" else 160) // n_samples)
        seed = settings.seed if seed is None else seed
        gen = torch.Generator().manual_seed(int(seed if seed is not None else 0))
        counts, mask = registered_counts(self.get_anndata_manager(adata, required=True))
        self.module.eval()
        kwargs = {"n_samples": n_samples, "sampler": sampler, "n_steps": n_steps, "generator": gen,
                  "spread_scale": spread_scale, "return_samples": return_samples}
        if zeros_missing and zero_rounds > 1:
            # each round hides one random group of the zeros; every other entry, zeros included, stays visible
            x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
            zeros = x == 0
            group = np.random.default_rng([int(seed if seed is not None else 0), _ZERO_ROUNDS_STREAM]).integers(
                0, zero_rounds, size=zeros.shape, dtype=np.int8)
            for g in range(zero_rounds):
                # the group's zeros are targets of their own spot; as neighbours they show their zero count
                fill = sp.csr_matrix(zeros & (group == g))
                loader = self._neighborhood_loader(adata, batch_size, False, extra_missing=extra, fill=fill)
                m, sd, draws = self._sample_pass(loader, adata.shape, **kwargs)
                if g == 0:  # also fills the missing (NaN and `target`) entries
                    mean, std, samples = m, sd, draws
                else:
                    sel = zeros & (group == g)
                    mean[sel], std[sel] = m[sel], sd[sel]
                    if samples is not None:
                        samples[:, sel] = draws[:, sel]
        else:
            loader = self._neighborhood_loader(adata, batch_size, zeros_missing, extra_missing=extra)
            mean, std, samples = self._sample_pass(loader, adata.shape, **kwargs)
        # Observed entries keep exactly the value stmcdi.pp.normalize gives them: the model's round trip through
        # its per-gene scaling would move them by float32 round-off.
        missing = missing_mask(counts, mask)
        if extra is not None:
            missing = (missing + extra).astype(bool)
        exact, library, _ = log_normalize(counts, missing, target_sum=float(self.module.target_sum))
        keep = ~np.isnan(exact)
        if zeros_missing:
            keep &= exact != 0  # log1p(c * s / l) is 0 exactly when the count is 0
        if smooth > 0:
            values = np.where(keep, exact, mean).astype(mean.dtype)  # neighbours show their observed values exactly
            if smooth_graph == "expression":
                table = expression_neighbors(values, min(int(smooth_neighbors), adata.n_obs - 1), seed=seed)
            else:
                table = self._smoothing_table(adata, int(smooth_neighbors))
            mean = smooth_fills(values, ~keep, table, float(smooth))
        if shrink != 1.0:
            mean = shrink_within_genes(mean, ~keep, float(shrink))
        if zeros_missing and zero_dispersion > 0:  # the filled zeros, conditioned on their zero count
            zero = (exact == 0) & ~keep
            moved = zero_conditioned(mean, library, float(self.module.target_sum), float(zero_dispersion))
            mean[zero] = moved[zero]
        mean[keep] = exact[keep]
        std[keep] = 0.0
        if samples is not None:
            samples[:, keep] = exact[keep]
        out = {"mean": mean, "std": std}
        if samples is not None:
            out["samples"] = samples
        if inplace:
            adata.layers[layer_added] = mean
            if n_samples > 1:
                adata.layers[f"{layer_added}_std"] = std
            return out if return_samples else None
        return out

    def _smoothing_table(self, adata: AnnData, n_neighs: int) -> np.ndarray:
        """Neighbour table of ``n_neighs`` nearest spots for ``impute(smooth=...)``; writes nothing to ``adata``."""
        params = adata.uns.get(KEYS.UNS, {}).get("spatial_graph", {})
        library_key = params.get("library_key")
        if library_key is not None and library_key in adata.obs:
            n_neighs = min(n_neighs, int(adata.obs[library_key].value_counts().min()) - 1)
        else:
            library_key = None
            n_neighs = min(n_neighs, adata.n_obs - 1)
        if n_neighs < 1:
            return np.arange(adata.n_obs)[:, None]
        return spatial_graph(adata, n_neighs=n_neighs, spatial_key=self.registry_["setup_args"]["spatial_key"],
                             library_key=library_key, allow_duplicates=True, copy=True)

    def _sample_pass(
        self, loader, shape: tuple[int, int], *, n_samples: int, sampler: str, n_steps: int | None,
        generator: torch.Generator, spread_scale: float, return_samples: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One pass over ``loader``: the estimate, the spread and (optionally) the scaled samples of every spot."""
        mean = np.empty(shape, dtype=np.float32)
        std = np.zeros(shape, dtype=np.float32)
        samples = np.empty((n_samples, *shape), dtype=np.float32) if return_samples else None
        for batch in loader:
            rows = batch["row"].numpy()
            target = batch.get(BATCH_KEYS.TARGET)  # with entries to fill that are observed (zeros)
            draws = self.module.sample(
                batch["counts"], batch["library"], batch["edge_index"], len(rows),
                n_samples=n_samples, sampler=sampler, n_steps=n_steps, generator=generator,
                target=target, **_expression_inputs(batch),
            ).float().cpu()
            mean[rows] = self._point_estimate(batch, draws, target)
            if spread_scale != 1.0:  # widen (or narrow) the samples around their own mean
                centre = draws.mean(0, keepdim=True)
                draws = (centre + spread_scale * (draws - centre)).clamp_min(0.0)
            if n_samples > 1:
                std[rows] = draws.std(0, unbiased=False).numpy()
            if samples is not None:
                samples[:, rows] = draws.numpy()
        return mean, std, samples

    def _point_estimate(self, batch: dict, draws: torch.Tensor, target: torch.Tensor | None = None) -> np.ndarray:
        """The point estimate of a batch's seed spots, given their ``(n_samples, n, G)`` reverse-diffusion draws."""
        n = len(batch["row"])
        if self.module.objective == "hybrid":  # the one-pass estimate; the samples give the spread
            return self.module.predict(
                batch["counts"], batch["library"], batch["edge_index"], n, target=target, **_expression_inputs(batch),
            ).float().cpu().numpy()
        mean = draws.mean(0).numpy()
        if self.module.depth_weight:  # the point estimate's depth term (predict() adds its own)
            shift = self.module.depth_shift(batch["counts"], batch["library"], n).float().cpu().numpy()
            mean = np.maximum(mean + shift, 0.0)  # observed entries are reset by impute()
        return mean

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
        loader = self._neighborhood_loader(adata, batch_size)
        out = []
        for batch in loader:
            z = self.module.encode(batch["counts"], batch["library"], batch["edge_index"], len(batch["row"]),
                                   **_expression_inputs(batch))
            out.append(z.float().cpu().numpy())
        return np.concatenate(out, axis=0)


def _choose_spread_scale(
    truth: np.ndarray, draws: np.ndarray, level: float = 0.9, grid: np.ndarray = _SPREAD_GRID
) -> tuple[float, float, float]:
    """The smallest scale of the draws' deviations whose central ``level`` interval covers ``level`` of ``truth``.

    Each draw ``d`` becomes ``max(0, m + s (d - m))`` with ``m`` the mean of an entry's draws, exactly as
    :meth:`STMCDI.impute` scales them; intervals use the same quantiles as
    :func:`~stmcdi.benchmark.interval_coverage`.

    Parameters
    ----------
    truth
        ``(n,)`` true values of the calibration entries.
    draws
        ``(n_samples, n)`` samples of those entries.
    level
        Nominal coverage in ``(0, 1)``.
    grid
        Increasing candidate scales; the largest is returned if none reaches ``level``.

    Returns
    -------
    ``(scale, coverage at that scale, coverage of the draws as given)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = 5.0 + 2.0 * rng.standard_normal(4000)  # twice as wide as the draws below
    >>> draws = 5.0 + rng.standard_normal((50, 4000))
    >>> scale, coverage, unscaled = _choose_spread_scale(truth, draws)
    >>> 1.8 <= scale <= 2.2, coverage >= 0.9, unscaled < 0.7
    (True, True, True)
    """
    truth = np.asarray(truth, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.float64)
    centre = draws.mean(axis=0, keepdims=True)
    dev = draws - centre
    q = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]

    def cover(s: float) -> float:
        lo, hi = np.quantile(np.maximum(centre + s * dev, 0.0), q, axis=0, method="weibull")
        return float(np.mean((truth >= lo) & (truth <= hi)))

    unscaled = cover(1.0)
    for s in grid:
        c = cover(float(s))
        if c >= level:
            return float(s), c, unscaled
    return float(grid[-1]), c, unscaled


def _gene_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and sd over observed entries (``setup_anndata`` guarantees one per gene)."""
    mean = np.nanmean(x, axis=0)
    std = np.nanstd(x, axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def within_gene_slope(truth, estimate, genes) -> float:
    r"""Slope of the truth on the estimate within genes: how much of an estimate's within-gene variation is real.

    Entries are centred on their gene's means (of the truth and of the estimate, over the entries given; genes
    with a single entry drop out) and the slope is :math:`\sum_i \tilde t_i \tilde e_i / \sum_i \tilde e_i^2`.
    Noise in the truth that is independent of the estimate does not bias it, so noisy held-back counts
    estimate it without bias. A slope of 1 says the estimate's within-gene deviations are as large as they
    should be; below 1, they are too large for the signal they carry, and shrinking them towards the gene's
    mean by that factor minimises the squared error without changing any per-gene correlation
    (``impute(shrink="calibrated")``).

    Parameters
    ----------
    truth
        ``(n,)`` true values of held-back entries.
    estimate
        ``(n,)`` the model's estimates of them.
    genes
        ``(n,)`` integer gene index of each entry.

    Returns
    -------
    The slope, ``nan`` where the estimate does not vary within any gene.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> genes = np.repeat(np.arange(100), 20)
    >>> signal = rng.standard_normal(2000) + genes  # gene levels differ; within a gene the signal has sd 1
    >>> estimate = genes + 2.0 * (signal - genes)  # twice too wide
    >>> truth = signal + rng.standard_normal(2000)  # noisy
    >>> round(within_gene_slope(truth, estimate, genes), 1)
    0.5
    """
    truth = np.asarray(truth, dtype=np.float64).ravel()
    estimate = np.asarray(estimate, dtype=np.float64).ravel()
    genes = np.asarray(genes).ravel()
    if not truth.shape == estimate.shape == genes.shape:
        raise ValueError(f"truth, estimate and genes must have the same length, got {truth.shape}, "
                         f"{estimate.shape} and {genes.shape}.")
    _, g = np.unique(genes, return_inverse=True)
    n = np.bincount(g).astype(np.float64)
    dt = truth - (np.bincount(g, truth) / n)[g]
    de = estimate - (np.bincount(g, estimate) / n)[g]
    den = float(np.sum(de * de))
    return float(np.sum(dt * de) / den) if den > 1e-12 else float("nan")


def shrink_within_genes(values, fill, factor: float) -> np.ndarray:
    """Shrink the filled entries of each gene towards their own mean: ``m_g + factor (v - m_g)``.

    ``m_g`` is the mean of gene ``g``'s filled values; a per-gene affine map with a positive factor leaves
    every per-gene correlation of the fill unchanged and moves only its within-gene spread.

    Parameters
    ----------
    values
        ``(n_obs, n_vars)`` estimates.
    fill
        Boolean ``(n_obs, n_vars)``: the entries to shrink (a gene's others are not used or moved).
    factor
        In ``[0, 1]``; ``1`` returns ``values`` unchanged, ``0`` gives every filled entry of a gene its mean.

    Returns
    -------
    Array of the dtype of ``values``, values kept at 0 or above.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.array([[1.0, 5.0], [3.0, 7.0]])
    >>> shrink_within_genes(v, np.array([[True, True], [True, False]]), 0.5).tolist()
    [[1.5, 5.0], [2.5, 7.0]]
    """
    if not (np.isfinite(factor) and 0.0 <= factor <= 1.0):
        raise ValueError(f"shrink must lie in [0, 1] or be 'calibrated', got {factor!r}.")
    values = np.asarray(values)
    fill = np.asarray(fill, dtype=bool)
    if factor == 1.0 or not fill.any():
        return values
    v = values.astype(np.float64)
    n = fill.sum(axis=0)
    m = np.where(fill, v, 0.0).sum(axis=0) / np.maximum(n, 1)
    out = np.where(fill, np.maximum(m + factor * (v - m), 0.0), v)
    return out.astype(values.dtype, copy=False)


def smooth_fills(values, fill, neighbors, alpha: float, steps: int = SMOOTH_STEPS) -> np.ndarray:
    """Move the filled entries towards their spot neighbourhood's average, at each gene's own level.

    ``y = (1 - alpha) v + alpha P^steps v`` at the ``fill`` entries, ``P`` the average over each row of
    ``neighbors`` (a spot and its nearest spots); then each gene's filled entries move by one constant so
    that their mean is that of ``v``'s (averaging with observed neighbours lifts filled zeros; the constant
    puts them back and changes no per-gene correlation). Values are kept at 0 or above. Other entries are
    inputs and are returned unchanged.

    Parameters
    ----------
    values
        ``(n_obs, n_vars)`` estimates (observed values at the entries not filled).
    fill
        Boolean ``(n_obs, n_vars)``: the entries to move.
    neighbors
        Integer ``(n_obs, 1 + k)`` table ``[i, nb_1, …, nb_k]`` (:func:`stmcdi.pp.spatial_graph` with
        ``copy=True``).
    alpha
        In ``[0, 1]``: ``0`` returns ``values`` unchanged, ``1`` replaces each fill by the neighbourhood average
        (recentred).
    steps
        Applications of ``P`` (default 3): each widens the neighbourhood by one more ring of neighbours.

    Returns
    -------
    Array of the dtype of ``values``.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.array([[1.0], [3.0], [5.0], [1.0]])  # spots 0 and 3 filled, both at 1
    >>> nb = np.array([[0, 1], [1, 0], [2, 3], [3, 2]])  # each spot and its nearest
    >>> smooth_fills(v, np.array([[True], [False], [False], [True]]), nb, 1.0, steps=1).ravel().tolist()
    [0.5, 3.0, 5.0, 1.5]
    """
    if not (np.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"smooth must lie in [0, 1], got {alpha!r}.")
    values = np.asarray(values)
    fill = np.asarray(fill, dtype=bool)
    neighbors = np.asarray(neighbors)
    if neighbors.ndim != 2 or neighbors.shape[0] != values.shape[0]:
        raise ValueError(f"`neighbors` must be an (n_obs, 1 + k) table; got shape {neighbors.shape} for "
                         f"{values.shape[0]} spots.")
    if alpha == 0.0 or not fill.any():
        return values
    n, width = neighbors.shape
    P = sp.csr_matrix((np.full(n * width, 1.0 / width), (np.repeat(np.arange(n), width), neighbors.ravel())),
                      shape=(n, n))
    v = values.astype(np.float64)
    y = v
    for _ in range(int(steps)):
        y = P @ y
    y = (1.0 - alpha) * v + alpha * y
    count = np.maximum(fill.sum(axis=0), 1)
    shift = (np.where(fill, v, 0.0).sum(axis=0) - np.where(fill, y, 0.0).sum(axis=0)) / count
    out = np.where(fill, np.maximum(y + shift, 0.0), v)
    return out.astype(values.dtype, copy=False)


def expression_neighbors(values, n_neighbors: int, n_pcs: int = 50, seed: int | None = 0) -> np.ndarray:
    """Each spot and its ``n_neighbors`` nearest spots in the principal components of ``values``.

    The graph of ``impute(smooth_graph="expression")``: Euclidean neighbours in the first ``n_pcs`` principal
    components (:class:`sklearn.decomposition.PCA`, seeded) of the ``(n_obs, n_vars)`` estimate.

    Parameters
    ----------
    values
        ``(n_obs, n_vars)`` finite values (log-normalised, observed values and fills).
    n_neighbors
        Neighbours per spot, at most ``n_obs - 1``; a spot is never its own neighbour.
    n_pcs
        Principal components (at most ``min(n_obs, n_vars) - 1``).
    seed
        Seed of the randomised PCA solver on large matrices.

    Returns
    -------
    int64 table ``(n_obs, 1 + n_neighbors)`` ``[i, nb_1, ..., nb_k]``, nearest first, as
    :func:`~stmcdi.smooth_fills` reads it.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.1]])
    >>> expression_neighbors(v, 1, n_pcs=1).tolist()
    [[0, 1], [1, 0], [2, 3], [3, 2]]
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    values = np.asarray(values, dtype=np.float64)
    n_obs, n_vars = values.shape
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer) \
            or not 1 <= n_neighbors <= n_obs - 1:
        raise ValueError(f"n_neighbors must be an integer in [1, n_obs - 1 = {n_obs - 1}], got {n_neighbors!r}.")
    if not np.isfinite(values).all():
        raise ValueError("`values` must be finite; fill missing entries before building the expression graph.")
    n_pcs = int(max(1, min(n_pcs, min(n_obs, n_vars) - 1)))
    pcs = PCA(n_components=n_pcs, random_state=seed).fit_transform(values)
    idx = NearestNeighbors(n_neighbors=int(n_neighbors)).fit(pcs).kneighbors(return_distance=False)  # not itself
    return np.hstack([np.arange(n_obs)[:, None], idx]).astype(np.int64)


def zero_conditioned(values, library, target_sum: float, dispersion: float) -> np.ndarray:
    r"""Condition filled values of zero counts on the zero: the gamma-Poisson posterior mean of the spot's rate.

    A filled value ``v`` (log-normalised, the estimate of the entry had it not been seen) is read as a
    gamma-distributed expected count :math:`m = \operatorname{expm1}(v)\, l / s` (``l`` the spot's library,
    ``s`` the target sum) with squared coefficient of variation ``dispersion`` (:math:`\phi`). A Poisson count
    of 0 observed at that rate moves its mean to :math:`m / (1 + \phi m)`, returned as
    :math:`\log(1 + s\, m / ((1 + \phi m)\, l))`. Deeper spots, where a zero says more, move more;
    ``dispersion=0`` returns ``values`` unchanged. Spots with library 0 are returned unchanged.

    Parameters
    ----------
    values
        ``(n_obs, n_vars)`` (or any shape broadcasting with ``library[:, None]``) filled values, log-normalised.
    library
        ``(n_obs,)`` library sizes (observed counts) of the spots.
    target_sum
        Target sum of the log-normalisation (``model.module.target_sum``).
    dispersion
        :math:`\phi \ge 0`.

    Returns
    -------
    float array of the shape of ``values``.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.log1p(np.array([[1.0, 4.0]]))  # expected counts 1 and 4 at library = target sum
    >>> np.expm1(zero_conditioned(v, np.array([100.0]), 100.0, 0.5)).round(4).tolist()  # 1/1.5, 4/3
    [[0.6667, 1.3333]]
    """
    if not (np.isfinite(dispersion) and dispersion >= 0.0):
        raise ValueError(f"zero_dispersion must be a non-negative number, got {dispersion!r}.")
    values = np.asarray(values)
    if dispersion == 0.0:
        return values
    lib = np.asarray(library, dtype=np.float64).reshape(-1, *([1] * (values.ndim - 1)))
    m = np.expm1(values.astype(np.float64)) * lib / float(target_sum)  # expected count in the spot
    out = np.log1p(m / (1.0 + dispersion * m) * float(target_sum) / np.where(lib > 0, lib, 1.0))
    return np.where(lib > 0, out, values).astype(values.dtype, copy=False)


def _expression_inputs(batch: dict) -> dict:
    """The expression-neighbour tensors of a batch, as keyword arguments of the module's methods."""
    return {"expression_counts": batch.get(BATCH_KEYS.EXPRESSION_COUNTS),
            "expression_library": batch.get(BATCH_KEYS.EXPRESSION_LIBRARY)}


def detection_groups(x: np.ndarray, n_groups: int) -> np.ndarray:
    """Split the genes into ``n_groups`` groups of equal size by their detected fraction.

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.
    n_groups
        Number of groups (at most ``n_vars``).

    Returns
    -------
    int64 ``(n_vars,)``: group 0 holds the genes detected in the smallest fraction of their observed entries.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0, 1.0, 1.0, np.nan], [0.0, 0.0, 1.0, 1.0]])
    >>> detection_groups(x, 2).tolist()
    [0, 0, 1, 1]
    """
    if not 1 <= n_groups <= x.shape[1]:
        raise ValueError(f"n_gene_groups must be in [1, n_vars] = [1, {x.shape[1]}], got {n_groups}.")
    obs = ~np.isnan(x)
    detected = (np.nan_to_num(x) > 0).sum(axis=0) / np.maximum(obs.sum(axis=0), 1)
    rank = np.argsort(np.argsort(detected, kind="stable"), kind="stable")
    return np.minimum(rank * n_groups // x.shape[1], n_groups - 1).astype(np.int64)


def _spot_feature_stats(counts, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd over spots of the summaries of :meth:`STMCDIModule.spot_summary`, all observed entries visible."""
    c = np.asarray(counts.toarray() if sp.issparse(counts) else counts, dtype=np.float64)
    obs = ~np.isnan(x)
    n = np.maximum(obs.sum(axis=1), 1)
    c = np.where(obs, np.nan_to_num(c, nan=0.0), 0.0)
    feats = np.column_stack([
        np.where(obs, x, 0.0).sum(axis=1) / n,
        (c > 0).sum(axis=1) / n,
        np.log1p(c.sum(axis=1) / n),
    ])
    return feats.mean(axis=0).astype(np.float32), feats.std(axis=0).astype(np.float32)


def _check_observed(adata: AnnData, miss: sp.csr_matrix, what: str) -> None:
    n_miss_gene = np.asarray(miss.sum(axis=0)).ravel()
    empty_genes = np.flatnonzero(n_miss_gene == adata.n_obs)
    if empty_genes.size:
        raise ValueError(
            f"{empty_genes.size} genes of {what} have no observed entry (e.g. "
            f"{list(adata.var_names[empty_genes[:3]])}); nothing can be learnt about them. Remove them first."
        )
    n_miss_spot = np.asarray(miss.sum(axis=1)).ravel()
    empty_spots = int((n_miss_spot == adata.n_vars).sum())
    if empty_spots:
        warnings.warn(
            f"{empty_spots} spots have no observed entry; they will be imputed from their neighbours alone "
            "(at the median library size).",
            UserWarning,
            stacklevel=3,
        )
