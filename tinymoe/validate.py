"""Checks for hyper-parameters: one clear error naming the argument and the allowed range.

Every public constructor checks its numbers here, so a typo fails at construction with a
message such as ``SwitchMoE: capacity_factor must be a finite number > 0, got inf``
instead of a NaN loss a thousand steps later, or an error that blames another argument.

- ``integer(owner, name, value, low, high)``: a Python/NumPy int (``True`` is refused: a bool
  is not a count), inside ``[low, high]``; returns it as an ``int``.
- ``real(owner, name, value, low, high, low_open, high_open)``: an int or float (not a bool,
  not a string), finite, inside the range; returns it as a ``float``.
- ``choice(owner, name, value, allowed)``: one of a fixed set of strings.
"""

from __future__ import annotations

import math
import numbers


class ArgumentTypeError(TypeError, ValueError):
    """A hyper-parameter of the wrong type (a string, a bool, 4.5 for a count).

    Both a TypeError and a ValueError (as NumPy's AxisError is both an IndexError and a
    ValueError): ``except ValueError`` around a constructor catches every bad argument.
    """


def _where(owner: str, name: str) -> str:
    return f"{owner}: {name}" if owner else name


def _range(low, high, low_open=False, high_open=False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return "any value"


def integer(owner: str, name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high], or a ValueError/TypeError naming ``name``."""
    allowed = _range(low, high)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(
            f"{_where(owner, name)} must be an integer {allowed}, got {value!r} ({type(value).__name__})"
        )
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{_where(owner, name)} must be an integer {allowed}, got {value}")
    return value


def real(
    owner: str,
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the range (ends open or closed), or an error naming ``name``."""
    allowed = _range(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(
            f"{_where(owner, name)} must be a finite number {allowed}, got {value!r} ({type(value).__name__})"
        )
    value = float(value)
    outside = not math.isfinite(value)
    if low is not None:
        outside |= value <= low if low_open else value < low
    if high is not None:
        outside |= value >= high if high_open else value > high
    if outside:
        raise ValueError(f"{_where(owner, name)} must be a finite number {allowed}, got {value!r}")
    return value


def choice(owner: str, name: str, value, allowed) -> str:
    """``value`` if it is one of ``allowed`` (strings), else an error listing them."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{_where(owner, name)} must be one of {tuple(allowed)}, got {value!r}")
    return value
