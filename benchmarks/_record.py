"""The one way a benchmark reports: its JSON record printed, and written to --out when given."""

from __future__ import annotations

import json
from pathlib import Path


def emit(record: dict, out: Path | None) -> None:
    text = json.dumps(record, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
