"""One BLAS thread for NumPy and SciPy while torch computes.

Training and imputation interleave small NumPy / SciPy products (each batch's expression neighbours, the
read-out's estimates) with torch's computation. NumPy's BLAS (OpenBLAS in the PyPI wheels) keeps its threads
spinning for a while after each product, on the cores torch's OpenMP threads use, which slows every step
(measured on the Benchmarks page). Within :meth:`~stmcdi.STMCDI.train` and
:meth:`~stmcdi.STMCDI.impute` the BLAS libraries loaded outside torch therefore run on one thread; torch's own
threads (``torch.set_num_threads``) are left alone, and the previous settings come back on return.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def one_blas_thread():
    """Context manager in which the BLAS libraries loaded outside torch use one thread.

    Libraries are found with :mod:`threadpoolctl`; a BLAS inside torch's own package (OpenBLAS on Linux ARM
    wheels) is not limited, so torch's matrix products keep their threads.

    Yields
    ------
    ``None``; the previous thread counts are restored on exit.

    Examples
    --------
    >>> import numpy as np
    >>> with one_blas_thread():
    ...     y = np.ones((64, 1000)) @ np.ones((1000, 30))
    """
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    outside = [lib.filepath for lib in controller.lib_controllers
               if lib.user_api == "blas" and "torch" not in str(lib.filepath)]
    with controller.select(filepath=outside).limit(limits=1):
        yield


def with_one_blas_thread(func: F) -> F:
    """Decorator: run ``func`` within :func:`one_blas_thread`.

    Parameters
    ----------
    func
        The function to wrap.

    Returns
    -------
    The wrapped function, with ``func``'s name and docstring.

    Examples
    --------
    >>> @with_one_blas_thread
    ... def f():
    ...     return 1
    >>> f()
    1
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with one_blas_thread():
            return func(*args, **kwargs)

    return wrapper
