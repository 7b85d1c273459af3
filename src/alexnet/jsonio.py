"""JSON from files made elsewhere: nesting too deep to parse is damage like any other."""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, where arrays or objects nested past Python's recursion limit (a crafted
    file: ``[[[[...`` 100,000 deep) raise :class:`json.JSONDecodeError`, as other damage does, so the
    readers that name the file in one line say it too: json's RecursionError was an internal error."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
