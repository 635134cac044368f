"""What layers check about their arguments and their input, in one place.

Numbers go through ``tinymoe.validate`` (an int is an int, finite, in range). Beyond that,
the layers share:

- ``divisor``: a count that must split another one evenly (heads of d_model, groups of
  experts, segments of d_hidden, sequences of the batch);
- ``probability``: a dropout rate, in [0, 1);
- ``as_input``: the one input rule of every layer and router, so that they all accept the
  same things and fail the same clear way; ``token_ids``: the rule for integer token ids.
"""

from __future__ import annotations

import numpy as np

from tinymoe import backend
from tinymoe.tensor import FLOAT_DTYPES, Tensor, tensor
from tinymoe.validate import ArgumentTypeError, integer, real


def divisor(owner: str, name: str, value, whole_name: str, whole: int) -> int:
    """``value`` as an int >= 1 that divides ``whole``, or an error naming ``name``."""
    value = integer(owner, name, value, 1)
    if whole % value:
        raise ValueError(f"{owner}: {name} must divide {whole_name}={whole}, got {value}")
    return value


def probability(owner: str, name: str, value) -> float:
    """A dropout rate: in [0, 1) (p = 1 would drop everything and scale by 1/0)."""
    return real(owner, name, value, 0, 1, high_open=True)


def as_input(layer, x, axes: str = "...", width: int | None = None) -> Tensor:
    """``x`` as a float Tensor of the shape ``layer`` expects, or an error naming ``x``.

    ``axes`` names that shape, its last axis ``width`` wide when given: "..., d_model" (any
    number of leading axes, so (d_model,) is a single token), "N, d_model" (routers: a batch
    of tokens), "batch, time, d_model" (attention, LSTM: sequences). The rule:

    - a Tensor is used as it is; a NumPy/CuPy array or a nested list is converted as
      ``tm.tensor`` does (a list becomes float32), onto the layer's device;
    - it must hold floats: integer or boolean values are refused with a TypeError (cast them,
      ``x.astype(np.float32)``; token *ids* go through an ``Embedding``);
    - a wrong shape is a ValueError showing the expected one.

    Empty inputs are fine (0 tokens, or 0 time steps): layers return empty outputs.
    """
    owner = type(layer).__name__
    if not isinstance(x, Tensor):
        if not isinstance(x, (list, tuple)) and not hasattr(x, "dtype"):
            raise ArgumentTypeError(f"{owner}: x must be a Tensor, an array or a nested list, got {type(x).__name__}")
        x = tensor(x, device=layer.device)
    if x.dtype.type not in FLOAT_DTYPES:
        raise TypeError(
            f"{owner}: x must hold floats (float16, float32 or float64), got {x.dtype}: "
            "cast it first, e.g. x.astype(np.float32)"
        )
    names = [a.strip() for a in axes.split(",")]
    if width is not None:
        names[-1] = f"{names[-1]}={width}"
    if names[0] == "...":  # any number of leading axes
        shape_fits = x.ndim >= len(names) - 1
    else:
        shape_fits = x.ndim == len(names)
    if not shape_fits or (width is not None and x.shape[-1] != width):
        raise ValueError(f"{owner}: x must be ({', '.join(names)}), got shape {tuple(x.shape)}")
    return x



def token_ids(owner: str, ids, device: str):
    """Integer token ids as an array on ``device`` (a Tensor, array or nested list is accepted)."""
    ids = ids.data if isinstance(ids, Tensor) else ids
    ids = backend.to_device(backend.array_module(ids).asarray(ids), device)
    if ids.dtype.kind not in "iu":
        if ids.size:
            raise TypeError(f"{owner}: ids must be integer token ids, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)  # an empty list has no dtype of its own (NumPy says float64)
    return ids
