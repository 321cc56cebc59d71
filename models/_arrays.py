"""Array helpers shared by the model modules (private: not part of the model's surface).

Conventions used everywhere in ``models``:

- NaN means *unknown* (a missing or not-good measurement). It propagates: a quantity computed
  from an unknown input is unknown.
- +inf means *does not apply* (e.g. the air limit of a rack without an air allowance).
- Element-wise functions accept scalars or arrays; a scalar result comes back as a numpy
  float (a subclass of ``float``), an array result as an array.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

Floats: TypeAlias = NDArray[np.float64]
FloatOrArray: TypeAlias = float | NDArray[np.float64]


def floats(x: ArrayLike) -> Floats:
    """``x`` as a float64 array (no copy when it already is one)."""
    return np.asarray(x, dtype=np.float64)


def scalar_or_array(x: ArrayLike) -> Any:
    """A 0-d result as a numpy scalar (a numpy float is a ``float``), any other unchanged."""
    return np.asarray(x)[()]


def ratio(numerator: ArrayLike, denominator: ArrayLike) -> Floats:
    """``numerator / denominator`` where the denominator is > 0, NaN elsewhere."""
    num, den = floats(numerator), floats(denominator)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def group_sum(values: ArrayLike, group: ArrayLike, n_groups: int) -> Floats:
    """Sum of ``values`` per group (``group[i]`` = index of element i's group, -1 = none).

    A group holding any NaN value sums to NaN: an unknown member makes the total unknown.
    """
    g = np.asarray(group, dtype=np.intp)
    v = np.broadcast_to(floats(values), g.shape)
    member = g >= 0
    return np.bincount(g[member], weights=v[member], minlength=n_groups)


def gather(per_group: ArrayLike, group: ArrayLike, absent: float = np.inf) -> Floats:
    """``per_group[group[i]]`` for each element, ``absent`` where ``group[i]`` is -1."""
    table = np.append(floats(per_group), absent)  # index -1 reads the appended value
    return table[np.asarray(group, dtype=np.intp)]
