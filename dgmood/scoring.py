"""Scoring data that does not fit in memory: a ``.npy`` file in, a ``.npy`` file of scores out.

:func:`score_file` memory-maps the input (``np.load(..., mmap_mode="r")``),
scores it in chunks of whole scoring batches and writes each chunk's scores
into a memory-mapped output, so peak memory stays flat in the number of rows
(``benchmarks/score_memory.py`` measures it). A row's score does not depend
on its batch mates (fixed-shape batches, shared noise), so chunking changes
no bit: the file holds exactly ``detector.score_samples(X)``.

:func:`score_dask` scores a ``dask.array`` block by block (``map_blocks``),
on whatever scheduler is active, e.g. a ``dask.distributed`` cluster; the
fitted detector travels to the workers by pickle. dask is an optional extra:
``pip install dgmood[dask]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

__all__ = ["score_file", "score_dask"]


def score_file(
    detector,
    input_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    labels_path: str | os.PathLike | None = None,
    chunk_batches: int = 16,
    progress: bool = True,
) -> Path:
    """Write ``detector.score_samples`` of every row of ``input_path`` to ``out_path`` (float64 ``.npy``).

    Parameters
    ----------
    detector : a fitted dgmood detector.
    input_path : ``.npy`` of shape ``(n, n_features)`` (or image-shaped, as ``score_samples`` accepts).
    out_path : where the ``(n,)`` float64 scores go (higher = more in-distribution).
    labels_path : optional ``.npy`` for the ``predict`` labels (+1 / -1, int8), from the same scores.
    chunk_batches : rows per chunk, in units of the detector's ``batch_size`` (whole batches, no padding
        until the last chunk); memory grows with it, not with ``n``.
    progress : a tqdm progress bar over chunks.
    """
    X = np.load(input_path, mmap_mode="r")
    if X.ndim < 2:
        raise ValueError(f"{str(input_path)!r} holds a {X.ndim}-D array; expected (n_samples, n_features).")
    n = len(X)
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float64, shape=(n,))
    labels = None if labels_path is None else np.lib.format.open_memmap(labels_path, mode="w+", dtype=np.int8,
                                                                        shape=(n,))
    chunk = max(int(chunk_batches), 1) * int(detector.batch_size)
    for start in tqdm(range(0, n, chunk), disable=not progress, desc="dgmood score", unit="chunk"):
        scores = detector.score_samples(np.asarray(X[start : start + chunk]))
        out[start : start + len(scores)] = scores
        if labels is not None:
            labels[start : start + len(scores)] = np.where(scores - detector.offset_ < 0, -1, 1)
    out.flush()
    if labels is not None:
        labels.flush()
    return Path(out_path)


def _score_block(block: np.ndarray, detector) -> np.ndarray:
    return detector.score_samples(np.asarray(block))


def score_dask(detector, X):
    """``detector.score_samples`` of a 2-D ``dask.array``, lazily: a 1-D dask array of float64 scores.

    Row chunks are scored independently (``map_blocks``; the feature axis is
    rechunked into one block). Since a row's score does not depend on its
    batch mates, the result equals ``detector.score_samples(X.compute())``
    bit for bit, whatever the chunks or the number of workers. Chunks of many
    scoring batches (``batch_size`` rows each) waste least on padding. Each
    worker runs torch with its own threads: with one worker process per core,
    set ``torch.set_num_threads(1)`` on the workers (``client.run``).
    """
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("score_dask needs dask: pip install 'dgmood[dask]'.") from exc
    X = da.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"score_dask expects a 2-D dask array (n_samples, n_features), got {X.ndim}-D.")
    X = X.rechunk({1: -1})
    return X.map_blocks(_score_block, detector, drop_axis=1, dtype=np.float64)
