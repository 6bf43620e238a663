"""The doctor's findings: one Check per question, the printed report and doctor.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Status = Literal["PASS", "WARN", "FAIL"]
STATUSES: tuple[Status, ...] = ("PASS", "WARN", "FAIL")


@dataclass
class Check:
    """One answered question: its status, what was measured (one line), and for WARN/FAIL what to do next.

    `values` holds the numbers behind `measured` for doctor.json; `plots` the PNG files it drew.
    """

    name: str
    status: Status
    measured: str
    advice: str = ""
    values: dict = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0


def worst(checks: list[Check]) -> Status:
    return max((c.status for c in checks), key=STATUSES.index, default="PASS")


def render(checks: list[Check], header: str, footer: str = "") -> str:
    """The report as printed: a header line, one line per check, its next step indented under it."""
    width = max((len(c.name) for c in checks), default=10)
    lines = [header]
    for check in checks:
        lines.append(f"  {check.status:<4}  {check.name:<{width}}  {check.measured}")
        if check.status != "PASS" and check.advice:
            lines.append(f"  {'':<4}  {'':<{width}}  -> {check.advice}")
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + (f"; {footer}" if footer else ""))
    return "\n".join(lines)


def _plain(value):
    """JSON has no NaN or infinity: they become null (with the readable value still in `measured`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_report(checks: list[Check], path: Path, about: dict) -> Path:
    """doctor.json: what was examined (`about`), the overall status and every check with its numbers."""
    record = {"status": worst(checks), **about, "checks": [asdict(c) for c in checks]}
    path = Path(path)
    path.write_text(json.dumps(_plain(record), indent=2) + "\n")
    return path
