"""Axis arguments, normalised once: every op that takes an axis reads it through here.

NumPy accepts negative axes (-1 is the last), so forward works either way; but a backward
that rebuilds a shape or inverts a permutation from a raw ``-1`` goes wrong (the inverse of
``transpose(x, (-1, 0))`` is not ``(-1, 0)`` sorted). So ops turn axes into ``0..ndim-1``
before they use them, and an axis out of range is an error naming the op.
"""

from __future__ import annotations

import numbers

from numpy.exceptions import AxisError

from tinymoe.validate import ArgumentTypeError


def normalize_axis(axis, ndim: int, op: str) -> int:
    """One axis in ``[-ndim, ndim)`` -> the same axis in ``[0, ndim)``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ArgumentTypeError(f"{op}: axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise AxisError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dimension(s)")
    return int(axis) % ndim


def normalize_axes(axis, ndim: int, op: str) -> tuple[int, ...]:
    """``None`` -> every axis; an int or a tuple of ints -> sorted non-negative axes, no repeats.

    A 0-d tensor has no axes, but like PyTorch we accept axis 0 or -1 for it (and reduce
    over nothing), so code written for "the last axis" also works on a scalar.
    """
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if ndim == 0:
        for a in axes:
            normalize_axis(a, 1, op)
        return ()
    axes = tuple(normalize_axis(a, ndim, op) for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: axis {axis} repeats an axis")
    return tuple(sorted(axes))


def normalize_permutation(axes, ndim: int, op: str) -> tuple[int, ...]:
    """A reordering of all ``ndim`` axes (negative ones allowed) -> non-negative axes."""
    axes = tuple(normalize_axis(a, ndim, op) for a in axes) if ndim else tuple(axes)
    if sorted(axes) != list(range(ndim)):
        raise ValueError(f"{op}: axes {axes} must be a reordering of 0..{ndim - 1}, each axis once")
    return axes
