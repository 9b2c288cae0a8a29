"""Support of the command line: path checks before any work, staged writes, signals, one-line errors, logging."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger("stmcdi")

#: the first bytes of an HDF5 file (an .h5ad); it may follow a user block of 512, 1024, 2048, ... bytes
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: suffix of the temporary files and folders written next to an output before it is renamed into place
TMP_SUFFIX = ".stmcdi-tmp"


class UsageError(Exception):
    """A problem with the command line or the user's files: reported in one line, exit status 2."""


class Interrupted(BaseException):
    """Raised by the handler of SIGTERM / SIGINT installed by :func:`raise_on_signals`.

    A :class:`BaseException` (as :class:`KeyboardInterrupt`), so that ``except Exception`` clauses do not swallow
    it; Lightning tears its trainer down and re-raises it (a :class:`KeyboardInterrupt` would become
    ``sys.exit(1)`` there).
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


def one_line(err: BaseException) -> str:
    """The message of an exception on one line (a :class:`KeyError`'s message without its quotes).

    Parameters
    ----------
    err
        The exception.

    Returns
    -------
    The message, whitespace collapsed; the exception's type name if it has no message.

    Examples
    --------
    >>> one_line(KeyError("adata.obsm['spatial'] not found:   add coordinates"))
    "adata.obsm['spatial'] not found: add coordinates"
    """
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    elif isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err)
    return " ".join(text.split()) or type(err).__name__


def _read_head(path: Path, n: int = 8, offset: int = 0) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


def _is_hdf5(path: Path) -> bool:
    """Whether ``path`` starts with the HDF5 signature (at offset 0, 512, 1024, ...)."""
    if _read_head(path) == HDF5_SIGNATURE:
        return True
    size, offset = path.stat().st_size, 512
    while offset + 8 <= size:
        if _read_head(path, offset=offset) == HDF5_SIGNATURE:
            return True
        offset *= 2
    return False


def check_input(path: str | os.PathLike, what: str = "input") -> Path:
    """Check that ``path`` is a readable HDF5 (.h5ad) file, without loading it.

    Parameters
    ----------
    path
        The file.
    what
        How the message names it (``"input"``, ``"--data"``).

    Returns
    -------
    The path as given, as a :class:`~pathlib.Path`.
    """
    p = Path(path)
    if not p.exists():
        hint = " (a broken symbolic link)" if p.is_symlink() else ""
        raise UsageError(f"{what} {str(path)!r} does not exist{hint}.")
    if p.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder; expected an .h5ad file.")
    try:
        if p.stat().st_size == 0:
            raise UsageError(f"{what} {str(path)!r} is empty; expected an .h5ad file.")
        hdf5 = _is_hdf5(p)
    except PermissionError:
        raise UsageError(f"{what} {str(path)!r} cannot be read (permission denied).") from None
    except OSError as err:
        raise UsageError(f"{what} {str(path)!r} cannot be read ({one_line(err)}).") from None
    if not hdf5:
        raise UsageError(f"{what} {str(path)!r} is not an .h5ad file (no HDF5 signature); write it with "
                         "`adata.write_h5ad(path)`.")
    return p


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (resolved paths, symbolic links, hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _probe_write(folder: Path) -> None:
    """Create and delete a file in ``folder`` (os.access ignores read-only file systems and says yes to root)."""
    fd, probe = tempfile.mkstemp(prefix=".stmcdi-write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def _not_an_input(path, inputs: Iterable[Path], what: str) -> Path:
    p = Path(path)
    for src in inputs:
        if _same_file(p, Path(src)):
            raise UsageError(f"{what} {str(path)!r} is the input file {str(src)!r}; refusing to write over the input. "
                             "Choose another path.")
    return p


def _check_writable_folder(folder: Path, what: str, name: str) -> None:
    """Refuse a missing folder, a file in its place, or a folder where a file cannot be created."""
    if not folder.exists():
        raise UsageError(f"the folder of {what} {name!r} does not exist ({str(folder)!r}); create it first.")
    if not folder.is_dir():
        raise UsageError(f"the folder of {what} {name!r} is not a folder ({str(folder)!r}).")
    try:
        _probe_write(folder)
    except OSError as err:
        reason = "permission denied" if isinstance(err, PermissionError) else one_line(err)
        raise UsageError(f"cannot write {what} {name!r} into {str(folder)!r} ({reason}).") from None


def check_output(
    path: str | os.PathLike, *, inputs: Iterable[Path] = (), force: bool = False, what: str = "output"
) -> Path:
    """Check that a file can be written at ``path`` without destroying anything.

    Parameters
    ----------
    path
        The output file.
    inputs
        Files the command reads: the output may not be any of them (compared after resolving symbolic links and
        relative spellings, and by inode).
    force
        Allow replacing an existing file.
    what
        How the message names it (``"output"``, ``"--csv"``).

    Returns
    -------
    The path as given, as a :class:`~pathlib.Path`.
    """
    p = _not_an_input(path, inputs, what)
    if p.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder; give a file name such as {str(p / 'imputed.h5ad')!r}.")
    if (p.exists() or p.is_symlink()) and not force:
        raise UsageError(f"{what} {str(path)!r} already exists; pass --force to replace it.")
    _check_writable_folder(p.absolute().parent, what, str(path))
    return p


def check_model_folder(path: str | os.PathLike, *, inputs: Iterable[Path] = (), force: bool = False,
                       what: str = "--save-model") -> Path:
    """Check that a model can be saved in the folder ``path`` (created if absent; its parent must exist).

    Parameters
    ----------
    path
        The folder.
    inputs
        Files it may not be.
    force
        Allow replacing a model already saved there.
    what
        How the message names it.

    Returns
    -------
    The path as a :class:`~pathlib.Path`.
    """
    p = _not_an_input(path, inputs, what)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a file; give a folder for the model.")
    if p.is_dir():
        if any(p.glob("*model.pt")) and not force:
            raise UsageError(f"{what} {str(path)!r} already holds a saved model; pass --force to replace it.")
        _check_writable_folder(p, what, str(path))
    else:
        _check_writable_folder(p.absolute().parent, what, str(path))
    return p


def check_folder(path: str | os.PathLike, what: str) -> Path:
    """Check that ``path`` is a folder, or can be made one (its nearest existing ancestor is writable)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a file; give a folder.")
    existing = p.absolute()
    while not existing.exists():
        existing = existing.parent
    _check_writable_folder(existing if existing.is_dir() else existing.parent, what, str(path))
    return p


class Staged(contextlib.AbstractContextManager):
    """Outputs written beside their final place and moved there together on :meth:`commit`.

    Each :meth:`file` or :meth:`folder` is a temporary path in the output's own folder (so that the move is a
    rename on one file system: :func:`os.replace`, atomic). Leaving the ``with`` block without :meth:`commit`
    (an error, an interruption) deletes every temporary path, so an interrupted run leaves neither a half-written
    output nor a temporary file.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with Staged() as staged:
    ...     tmp = staged.file(folder / "out.txt")
    ...     _ = tmp.write_text("done")
    ...     staged.commit()
    >>> sorted(p.name for p in folder.iterdir())
    ['out.txt']
    >>> shutil.rmtree(folder)
    """

    def __init__(self):
        self._files: list[tuple[Path, Path]] = []
        self._folders: list[tuple[Path, Path]] = []

    def file(self, final: Path) -> Path:
        """A temporary path for the file ``final``, in its folder."""
        final = Path(final)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.absolute().parent)
        os.close(fd)
        self._files.append((Path(tmp), final))
        return Path(tmp)

    def folder(self, final: Path) -> Path:
        """A temporary folder whose files go into the folder ``final`` (created if needed) on commit."""
        final = Path(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.absolute().parent))
        self._folders.append((tmp, final))
        return tmp

    def commit(self) -> None:
        """Move every staged output into place (file permissions as for a new file under the umask)."""
        umask = os.umask(0)
        os.umask(umask)
        for tmp, final in self._files:
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, final)
        for tmp, final in self._folders:
            final.mkdir(exist_ok=True)
            for item in tmp.iterdir():
                os.replace(item, final / item.name)
        self._files = []
        self._clean()

    def _clean(self) -> None:
        for tmp, _ in self._files:
            tmp.unlink(missing_ok=True)
        for tmp, _ in self._folders:
            shutil.rmtree(tmp, ignore_errors=True)
        self._files, self._folders = [], []

    def __exit__(self, *exc) -> None:
        self._clean()


_received: list[int] = []  # signals turned into Interrupted in the current raise_on_signals block


def _raise_interrupted(signum, frame) -> None:
    _received.append(int(signum))
    raise Interrupted(signum)


def received_signal() -> int | None:
    """The first signal received in the current :func:`raise_on_signals` block, or ``None``.

    The handler raises wherever the main thread is; library code that catches every exception can replace
    :class:`Interrupted` with an error of its own, which the caller then reports as the interruption it is.
    """
    return _received[0] if _received else None


@contextlib.contextmanager
def raise_on_signals(signums: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` inside the block (main thread only), then restore.

    Parameters
    ----------
    signums
        The signals.

    Yields
    ------
    ``None``.
    """
    previous = {}
    _received.clear()
    for s in signums:
        try:
            previous[s] = signal.signal(s, _raise_interrupted)
        except ValueError:  # not the main thread: leave the signals alone
            pass
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def passive_openmp() -> Iterator[None]:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` (unless set) for the OpenMP runtimes loaded inside the block.

    numba's OpenMP threads (scanpy's seurat_v3 panel, :func:`stmcdi.pp.select_genes`) keep spinning after their
    work and starve torch on small machines: training ran 10-30 times slower on 2 cores. A runtime reads the
    variable when it loads, so it keeps the setting after the block; the environment itself is restored.

    Yields
    ------
    ``None``.
    """
    before = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            head, _, rest = text.partition(" ")
            text = f"{head} {record.levelname}: {rest}"
        return text


@contextlib.contextmanager
def cli_logging(verbosity: int = 0, quiet: bool = False) -> Iterator[None]:
    """Send the ``stmcdi`` logger (and Python warnings) to stderr, one timestamped line each, for the block.

    Parameters
    ----------
    verbosity
        0: INFO lines of stmcdi; 1 (``-v``): also its DEBUG lines and the INFO lines of Lightning and scvi-tools.
    quiet
        Only warnings and errors.

    Yields
    ------
    ``None``; the logger's handlers, level and propagation and :func:`warnings.showwarning` are restored after.
    """
    log = logging.getLogger("stmcdi")
    state = (log.level, log.propagate, list(log.handlers), warnings.showwarning)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbosity >= 1 else logging.INFO)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        log.warning("%s", " ".join(str(message).split()))

    warnings.showwarning = showwarning
    try:
        yield
    finally:
        handler.flush()
        log.setLevel(state[0])
        log.propagate = state[1]
        log.handlers = state[2]
        warnings.showwarning = state[3]


# ------------------------------------------------------------------------------------------------ data, progress
def quiet_lightning(verbosity: int = 0) -> None:
    """Import Lightning, scvi-tools and squidpy; keep their INFO messages off stderr unless ``verbosity >= 1``."""
    # squidpy 1.8.2 emits docrep SyntaxWarnings on import: filter before importing.
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    # Lightning, scvi-tools and squidpy (logging through spatialdata._logging) set their logger levels when
    # imported: import them first, then set them.
    import lightning.pytorch  # noqa: F401
    import scvi  # noqa: F401
    import squidpy  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric", "scvi", "spatialdata._logging"):
        logging.getLogger(name).setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)


def read_h5ad(path: Path):
    """Read the .h5ad ``path`` checked by :func:`check_input` (logged); refuse one without spots or genes."""
    import anndata as ad

    t0 = time.perf_counter()
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise UsageError(f"cannot read {str(path)!r} as an AnnData .h5ad file ({one_line(err)}).") from None
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise UsageError(f"{str(path)!r} has {adata.n_obs} spots x {adata.n_vars} genes; nothing to impute.")
    logger.info("Read %s: %d spots x %d genes (%.1f s).", path, adata.n_obs, adata.n_vars, time.perf_counter() - t0)
    return adata


def check_data(adata, layer: str | None, spatial_key: str | None, mask_layer: str | None = None) -> None:
    """Check the counts, the mask layer and the coordinates with the model's own checks, before any work.

    Parameters
    ----------
    adata
        The data.
    layer
        Layer with the counts (``None``: ``X``).
    spatial_key
        Key of the coordinates in ``obsm``; ``None`` skips them.
    mask_layer
        Optional layer marking further missing entries.
    """
    from ._validation import check_counts, get_coordinates, get_layer, missing_mask

    X = get_layer(adata, layer)
    mask = get_layer(adata, mask_layer) if mask_layer is not None else None
    check_counts(X, missing_mask(X, mask), f"adata.layers[{layer!r}]" if layer else "adata.X")
    if spatial_key is not None:
        get_coordinates(adata, spatial_key)


def count_missing(adata, layer: str | None, mask_layer: str | None = None) -> int:
    """The number of missing entries: NaN counts, or nonzero in ``mask_layer``."""
    from ._validation import get_layer, missing_mask

    mask = get_layer(adata, mask_layer) if mask_layer is not None else None
    return int(missing_mask(get_layer(adata, layer), mask).nnz)


def progress_callback(shape: tuple[int, int] | None = None, lines: bool = True, every_s: float = 30.0):
    """A Lightning callback that logs training's start and its progress, for logs read away from a terminal.

    Parameters
    ----------
    shape
        ``(spots, genes)`` named in the start line.
    lines
        Log a line after the first epoch, every 10% of the epochs and at least every ``every_s`` seconds (epoch,
        step, ``train_loss``, ``validation_mse`` once measured); ``False``: the start line only.
    every_s
        Most seconds between two lines.

    Returns
    -------
    The callback for ``model.train(callbacks=[...])`` (reusable); ``epochs``, ``steps``, ``max_epochs`` after.
    """
    from lightning.pytorch.callbacks import Callback

    class ProgressLog(Callback):
        def __init__(self):
            self.epochs = self.steps = 0
            self.max_epochs = None
            self.every = 1
            self.t0 = self.last = time.perf_counter()

        def on_train_start(self, trainer, pl_module):
            self.epochs = self.steps = 0
            self.t0 = self.last = time.perf_counter()
            self.max_epochs = trainer.max_epochs
            self.every = max(1, int(trainer.max_epochs or 1) // 10)
            if trainer.is_global_zero:
                what = f" ({shape[0]} spots x {shape[1]} genes)" if shape else ""
                logger.info("Training started on %s%s: at most %s epochs of %s steps; it stops when the error "
                            "on held-back entries stops improving.", trainer.strategy.root_device, what,
                            trainer.max_epochs, trainer.num_training_batches)

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs, self.steps = trainer.current_epoch + 1, trainer.global_step
            now = time.perf_counter()
            due = self.epochs == 1 or self.epochs % self.every == 0 or now - self.last >= every_s
            if not (lines and due and trainer.is_global_zero):
                return
            self.last = now
            parts = [f"epoch {self.epochs}/{trainer.max_epochs}", f"step {self.steps}"]
            for key in ("train_loss", "validation_mse", "validation_loss"):
                if key in trainer.callback_metrics:
                    parts.append(f"{key} {float(trainer.callback_metrics[key]):.4f}")
            logger.info("  %s (%.0f s)", ", ".join(parts), now - self.t0)

    return ProgressLog()


def csv_writer(path: str | None):
    """Append each result row to ``path`` as it arrives (header first), so an interrupted run keeps its rows.

    Parameters
    ----------
    path
        The CSV file (replaced); ``None`` writes nothing.

    Returns
    -------
    ``write(row: dict)`` for ``evaluate(on_result=...)``, or ``None``.
    """
    if not path:
        return None
    import csv

    Path(path).unlink(missing_ok=True)

    def write(row: dict) -> None:
        new = not Path(path).exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    return write


def report_benchmark(args, df, ceiling: float, reference: str | None, n_vars: int) -> None:
    """Print the summary of a benchmark (and the paired comparison against ``reference``); write the files.

    Parameters
    ----------
    args
        The parsed options (``markdown``, ``csv``).
    df
        The output of :func:`stmcdi.benchmark.evaluate`.
    ceiling
        The split-half ceiling of the per-gene PCC.
    reference
        The method compared with every other, seed by seed (skipped if absent).
    n_vars
        Genes of the panel (to flag protocols where few genes enter the per-gene median).
    """
    import stmcdi

    metrics = ["per_gene_pcc", "pcc", "rmse", "mae"]
    if "crps" in df and df["crps"].notna().any():
        metrics += ["crps", "coverage_90"]
    summary = stmcdi.benchmark.summarize(df, metrics=metrics, ceiling=ceiling)
    text = [f"Split-half ceiling of per-gene PCC: {ceiling:.3f}"]
    if "n_genes_scored" in df and (df["n_genes_scored"] > 0).any():
        basis = df[df["n_genes_scored"] > 0].groupby(["protocol", "ratio"])["n_genes_scored"].median()
        text.append("Genes in the per-gene PCC median (>= 10 held-out entries, non-constant; median over methods and seeds): "
                    + ", ".join(f"{p} {r:g}: {int(n)}" for (p, r), n in basis.items()))
        few = [f"{p} {r:g}" for (p, r), n in basis.items() if n < min(50, n_vars / 2)]
        if few:
            text.append(f"Few genes under {', '.join(few)}: there the per-gene PCC is the median of a handful of "
                        "genes; read it with the pooled PCC and RMSE.")
    text += ["", stmcdi.benchmark.to_markdown(summary)]
    if reference is not None and reference in set(df["method"]) and df["method"].nunique() > 1:
        cmp = stmcdi.benchmark.compare(df, reference=reference, metrics=("per_gene_pcc", "rmse"))
        cmp = cmp.round({"diff_mean": 4, "diff_sd": 4, "p_value": 4})
        text += ["", f"Paired comparison across seeds: {reference} minus each method", "",
                 stmcdi.benchmark.to_markdown(cmp)]
    print("\n" + "\n".join(text))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(text) + "\n")
        print(f"\nMarkdown tables: {args.markdown}")
    if args.csv:
        df.to_csv(args.csv, index=False)  # the same rows as written while running, in one consistent file
        print(f"\nPer-seed results: {args.csv}")
