"""Checks of the plain values a user hands the Python API, the CLI and the HTTP API (a count such as
k, a number such as a duplicate threshold, a choice among names), in one place so the three refuse
the same values in the same one-line words.

Numpy scalars count as the numbers they hold (`np.int64(3)` is k=3); booleans are not numbers here
(`True` is not k=1); NaN, infinity and complex numbers are refused, never rounded or cut.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable
from typing import Any

from lookalike.core.errors import LookalikeError, brief


class BadValueError(LookalikeError, ValueError):
    """A value of the wrong type or outside its range; the message names the value and what fits."""


def whole_number(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """`value` as a Python int (from an int or a numpy integer), within [low, high]."""
    if not isinstance(value, bool) and not _is_numpy_bool(value):
        try:
            number = operator.index(value)  # ints and numpy integers; not floats, strings or bools
        except TypeError:
            pass
        else:
            return _within(number, name, low, high)
    raise BadValueError(f"{name} must be {_kind('a whole number', low, high)}, not {_shown(value)}")


def real_number(value: object, name: str, low: float | None = None, high: float | None = None) -> float:
    """`value` as a finite Python float (from an int, a float or a numpy number), within [low, high]."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not _is_numpy_bool(value):
        number = float(value)
        if math.isfinite(number):
            return _within(number, name, low, high)
    raise BadValueError(f"{name} must be {_kind('a finite number', low, high)}, not {_shown(value)}")


def one_of(value: object, name: str, choices: Iterable[str]) -> str:
    """`value` when it is one of `choices` (names, compared exactly)."""
    allowed = list(choices)
    if isinstance(value, str) and value in allowed:
        return value
    raise BadValueError(f"{name} must be one of {', '.join(allowed)}, not {_shown(value)}")


def _within(number, name: str, low, high):
    if (low is not None and number < low) or (high is not None and number > high):
        raise BadValueError(f"{name} must be {_range(low, high)}, not {number}")
    return number


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    if low is not None:
        return f"at least {low}"
    return f"at most {high}" if high is not None else ""


def _kind(kind: str, low, high) -> str:
    bounds = _range(low, high)
    return f"{kind}, {bounds}" if bounds else kind


def _shown(value: object) -> str:
    return f"{brief(value)} ({type(value).__name__})"


def _is_numpy_bool(value: object) -> bool:
    return type(value).__name__ in ("bool_", "bool") and type(value).__module__ == "numpy"
