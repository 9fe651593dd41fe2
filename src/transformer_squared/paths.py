"""Where the project caches things: converted models, SVD factors, normalised task data.

``$T2_CACHE_DIR`` overrides the default ``~/.cache/transformer_squared`` (tests point it at a temp dir).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the project's cache root."""
    root = Path(os.environ.get("T2_CACHE_DIR") or Path.home() / ".cache" / "transformer_squared")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
