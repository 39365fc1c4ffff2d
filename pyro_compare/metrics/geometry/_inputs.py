"""What the geometry functions accept: decoders (callables or models) and latent arrays.

A *decoder* is any callable mapping a latent batch ``z_nd`` (a tensor of shape ``(n, d)``)
to the observation-space mean ``mu_ng`` of shape ``(n, G)`` (trailing dimensions are
flattened), or any object with a ``decoder_mean(z)`` method (duck typing:
``getattr(obj, "decoder_mean", obj)``). Rows must be decoded independently of each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Decoder", "as_latents", "flat_decode", "reference_tensor", "resolve_decoder"]

#: A callable ``z_nd -> mu_ng`` or an object with a ``decoder_mean(z)`` method.
Decoder = Callable[[Tensor], Tensor] | Any

_STOCHASTIC_LAYERS = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)


def resolve_decoder(decoder: Decoder) -> Callable[[Tensor], Tensor]:
    """Return the callable ``z_nd -> mu_ng`` (``decoder.decoder_mean`` if it exists).

    Warns when the decoder has dropout / batch-norm layers in training mode (random
    geometry, rows coupled through batch statistics).
    """
    fn = getattr(decoder, "decoder_mean", decoder)
    if not callable(fn):
        raise TypeError(
            "`decoder` must be a callable z_nd -> mu_ng or an object with a "
            f"`decoder_mean(z)` method; got {type(decoder).__name__}."
        )
    module = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    if isinstance(module, torch.nn.Module) and any(
        m.training and isinstance(m, _STOCHASTIC_LAYERS) for m in module.modules()
    ):
        warnings.warn(
            "The decoder has dropout / batch-norm layers in training mode, which make the "
            "geometry random and couple the rows of a batch; call `.eval()` first.",
            stacklevel=3,
        )
    return fn


def flat_decode(fn: Callable[[Tensor], Tensor], z_nd: Tensor) -> Tensor:
    """Decode and flatten trailing output dimensions: ``(n, d) -> (n, G)``."""
    out = fn(z_nd)
    if not isinstance(out, Tensor):
        raise TypeError(f"The decoder must return a tensor; got {type(out).__name__}.")
    if out.shape[0] != z_nd.shape[0]:
        raise ValueError(
            f"The decoder returned {out.shape[0]} rows for {z_nd.shape[0]} latent points; it "
            "must map a batch (n, d) to (n, ...)."
        )
    return out.reshape(z_nd.shape[0], -1)


def reference_tensor(fn: Any) -> Tensor | None:
    """A parameter of the decoder (for its dtype / device), if there is one."""
    for obj in (fn, getattr(fn, "__self__", None)):
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                return p
    return None


def as_latents(
    z: Any,
    like: Tensor | None = None,
    name: str = "z",
    one_d: str = "column",
    detach: bool = True,
) -> Tensor:
    """Convert latents to a floating ``(n, d)`` tensor (dtype/device of ``like`` for non-tensors).

    A 1-D input is a column of ``n`` one-dimensional latents (``one_d="column"``)
    or a single ``d``-dimensional point (``one_d="point"``). Tensors keep their dtype
    and device (integer tensors become floating); NumPy float32 / float64 arrays keep
    their precision unless ``like`` is given.
    """
    if isinstance(z, Tensor):
        z_t = z.detach() if detach else z
        if not z_t.is_floating_point():
            z_t = z_t.to(torch.get_default_dtype() if like is None else like.dtype)
    else:
        z_arr = np.asarray(z)
        if like is not None:
            dtype, device = like.dtype, like.device
        elif z_arr.dtype in (np.float32, np.float64):
            dtype, device = (torch.float32 if z_arr.dtype == np.float32 else torch.float64), None
        else:
            dtype, device = torch.get_default_dtype(), None
        z_t = torch.as_tensor(z_arr, dtype=dtype, device=device)
    if z_t.ndim == 1:
        z_t = z_t[None, :] if one_d == "point" else z_t[:, None]
    if z_t.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, d); got {tuple(z_t.shape)}.")
    return z_t
