"""What every benchmark script does last: write its result as JSON (creating the folder) and say where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(result: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out
