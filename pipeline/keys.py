"""Plain-data helpers shared by tracking, checkpoint keys and the report: nested mappings as
dotted keys, and a short stable hash of any JSON-able value."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'rl': {'lr': 1e-4}} -> {'rl.lr': 1e-4}; lists of mappings get their index."""
    flat: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(data, list) and any(isinstance(v, dict) for v in data):
        for index, value in enumerate(data):
            flat.update(flatten(value, f"{prefix}{index}."))
    else:
        flat[prefix.rstrip(".")] = data
    return flat


def params_hash(params_dump) -> str:
    """A short, stable hash of any JSON-able value."""
    return hashlib.sha256(json.dumps(params_dump, sort_keys=True, default=str).encode()).hexdigest()[:16]
