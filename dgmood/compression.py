r"""Lossless codelengths of 8-bit images: the complexity term of Serra et al. (ICLR 2020).

:func:`compressed_bits` returns :math:`C(x)`, the size in bits of each image
compressed losslessly by a general-purpose codec, a computable upper bound on
its Kolmogorov complexity. :class:`~dgmood.InputComplexityDetector` subtracts
it, per dimension, from a generative model's codelength:
:math:`S(x) = \mathrm{bpd}(x) - C(x)/D`.

Codecs:

* ``"png"``: Pillow's PNG encoder at compression level 9 (Pillow ships with
  matplotlib, a dependency);
* ``"zlib"``: zlib level 9 on the raw bytes, no image filters;
* ``"jpeg2000"``, ``"webp"``: lossless modes of the optional ``imagecodecs``
  package (a clear error names it when it is missing);
* ``"ensemble"``: the smallest of the codecs available, as the seed code
  (which took the minimum of PNG, JPEG 2000 and FLIF; FLIF is not on PyPI).

Sizes include each format's fixed overhead (signature, headers, checksums),
which is the same for every image of one size and format: it shifts
:math:`C(x)/D` by a constant and leaves rankings unchanged. No torch here.
"""

from __future__ import annotations

import io
import zlib

import numpy as np

__all__ = ["CODECS", "available_codecs", "compressed_bits", "require_codec"]

#: Every codec name :func:`compressed_bits` knows.
CODECS = ("png", "zlib", "jpeg2000", "webp", "ensemble")


def _png(img: np.ndarray) -> int:
    from PIL import Image

    buf = io.BytesIO()
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[img.shape[2]]
    Image.fromarray(img if img.shape[2] > 1 else img[:, :, 0], mode=mode).save(buf, format="PNG", compress_level=9)
    return buf.tell()


def _zlib(img: np.ndarray) -> int:
    return len(zlib.compress(np.ascontiguousarray(img).tobytes(), 9))


def require_codec(name: str) -> None:
    """An ``ImportError`` naming ``imagecodecs`` when ``name`` needs it and it is not installed."""
    if name in ("png", "zlib", "ensemble") or name in available_codecs():
        return
    raise ImportError(f"codec {name!r} needs the optional package imagecodecs (pip install imagecodecs); "
                      "'png' and 'zlib' need nothing extra.")


def _imagecodecs(name: str):
    require_codec(name)
    import imagecodecs

    if name == "jpeg2000":
        return lambda img: len(imagecodecs.jpeg2k_encode(img if img.shape[2] > 1 else img[:, :, 0], level=0))
    return lambda img: len(imagecodecs.webp_encode(img if img.shape[2] > 1 else np.repeat(img, 3, 2),
                                                   lossless=True))


def available_codecs() -> tuple[str, ...]:
    """The single codecs usable here: "png" and "zlib" always, the ``imagecodecs`` ones when installed."""
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return ("png", "zlib")
    return ("png", "zlib", "jpeg2000", "webp")


def _encoder(name: str):
    if name == "png":
        return _png
    if name == "zlib":
        return _zlib
    return _imagecodecs(name)


def compressed_bits(images: np.ndarray, input_shape: tuple[int, int, int], codec: str = "png") -> np.ndarray:
    """Size in bits of each image compressed losslessly by ``codec`` (module docstring), float64 (n,).

    Parameters
    ----------
    images : uint8 array of shape (n, C*H*W) (rows as a detector takes them) or (n, C, H, W).
    input_shape : (C, H, W), C in {1, 3, 4}.
    codec : one of :data:`CODECS`.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}.")
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"compressed_bits needs uint8 pixels 0..255, got dtype {images.dtype}.")
    if len(input_shape) != 3 or input_shape[0] not in (1, 3, 4):
        raise ValueError(f"input_shape must be (C, H, W) with C in (1, 3, 4), got {tuple(input_shape)}.")
    c, h, w = (int(s) for s in input_shape)
    if images.ndim < 2 or images[0].size != c * h * w:
        raise ValueError(f"each image must hold C*H*W = {c * h * w} pixels for input_shape {tuple(input_shape)}, "
                         f"got an array of shape {images.shape}.")
    hwc = images.reshape(len(images), c, h, w).transpose(0, 2, 3, 1)
    names = available_codecs() if codec == "ensemble" else (codec,)
    encoders = [_encoder(name) for name in names]
    return np.array([8.0 * min(enc(np.ascontiguousarray(img)) for enc in encoders) for img in hwc])
