"""Plain JSON values from what emovox results hold (NumPy, tensors, Paths, tuples, NaN)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars/arrays and tensors as Python numbers/lists, tuples as lists,
    Paths as strings, mapping keys as strings and non-finite floats as ``None``.

    ``json.dumps`` of the result is strict JSON (no ``NaN``/``Infinity``); a score that does not
    exist (no validation data: NaN) becomes ``null``.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):  # NumPy float64 included
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # NumPy arrays and scalars, torch tensors
        return jsonable(value.tolist())
    return value
