"""Device resolution, in one place: what ``device="auto" | "cpu" | "cuda" | "cuda:N"`` means."""

from __future__ import annotations

import warnings

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto", *, fallback: bool = False) -> torch.device:
    """The ``torch.device`` that ``device`` names.

    ``"auto"`` is CUDA when available, else the CPU; anything else goes through
    ``torch.device``. A CUDA device on a machine without CUDA raises a
    ``ValueError``, or, with ``fallback=True`` (scoring a detector fitted
    elsewhere), warns and returns the CPU.
    """
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(
                f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
            ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        if fallback:
            warnings.warn(f"device={device!r} is not available here; scoring on the CPU.", stacklevel=3)
            return torch.device("cpu")
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'.")
    return dev
