"""Scoring data that does not fit in memory: a ``.npy`` file in, a ``.npy`` file of scores out.

:func:`score_file` reads the input ``.npy`` chunk by chunk at its file offset
(plain reads: a memory map would keep every page it read resident), scores
each chunk of whole scoring batches and writes its scores into a
memory-mapped output, so peak memory stays flat in the number of rows
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
    input_path : ``.npy`` of shape ``(n, n_features)`` (or image-shaped, as ``score_samples`` accepts), C order.
    out_path : where the ``(n,)`` float64 scores go (higher = more in-distribution).
    labels_path : optional ``.npy`` for the ``predict`` labels (+1 / -1, int8), from the same scores.
    chunk_batches : rows per chunk, in units of the detector's ``batch_size`` (whole batches, no padding
        until the last chunk); memory grows with it, not with ``n``.
    progress : a tqdm progress bar over chunks.
    """
    chunk = max(int(chunk_batches), 1) * int(detector.batch_size)
    with open(input_path, "rb") as fh:
        shape, dtype, offset = _npy_header(fh, input_path)
        n, row = shape[0], int(np.prod(shape[1:]))
        out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float64, shape=(n,))
        labels = None if labels_path is None else np.lib.format.open_memmap(labels_path, mode="w+",
                                                                            dtype=np.int8, shape=(n,))
        for start in tqdm(range(0, n, chunk), disable=not progress, desc="dgmood score", unit="chunk"):
            rows = min(chunk, n - start)
            # plain reads at the chunk's offset: a memory map would keep every page read resident
            fh.seek(offset + start * row * dtype.itemsize)
            block = np.fromfile(fh, dtype=dtype, count=rows * row).reshape(rows, *shape[1:])
            if labels is None:
                out[start : start + rows] = detector.score_samples(block)
            else:
                out[start : start + rows], labels[start : start + rows] = detector.score_and_predict(block)
    out.flush()
    if labels is not None:
        labels.flush()
    return Path(out_path)


def _npy_header(fh, path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of an ``.npy`` file (C order, at least 2-D)."""
    major, _ = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    if len(shape) < 2:
        raise ValueError(f"{str(path)!r} holds a {len(shape)}-D array; expected (n_samples, n_features).")
    if fortran and len(shape) > 1:
        raise ValueError(f"{str(path)!r} is in Fortran order; save it with np.save(np.ascontiguousarray(X)).")
    if dtype.hasobject:
        raise ValueError(f"{str(path)!r} holds Python objects; save a numeric array.")
    return tuple(shape), dtype, fh.tell()


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
