"""Study specifications (TOML files in this folder) and the machinery that runs them."""

from __future__ import annotations

import tomllib
from pathlib import Path

SPEC_DIR = Path(__file__).parent


def catalog() -> list[tuple[str, str]]:
    """(name, one-line summary) for each study spec shipped in this folder."""

    out = []
    for path in sorted(SPEC_DIR.glob("*.toml"), key=lambda path: path.stem):
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        summary = str(data.get("description", "")).strip()
        out.append((path.stem, summary.splitlines()[0] if summary else ""))
    return out
