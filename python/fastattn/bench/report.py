"""The table printed while the cases run, the skip notes, and the JSON file."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from .._dtypes import dtype_name
from .measure import CaseReport, Result
from .suites import Case
from .timing import Peaks, Settings

# (name, width); the shape column's width comes from the case labels.
COLUMNS = (("suite", 7), ("shape", None), ("dtype", 8), ("impl", 24), ("ms", 10),
           ("throughput", 16), ("% peak", 7), ("fastattn x", 10), ("check", 18), ("note", 0))
RIGHT_ALIGNED = ("ms", "throughput", "% peak", "fastattn x")


class Table:
    """Prints rows as they are measured (a full CPU run takes minutes), so the column
    widths are fixed up front."""

    def __init__(self, cases: Sequence[Case], out=sys.stdout):
        self.out = out
        shape_width = max(len(c.label()) for c in cases)
        self.widths = {name: max(len(name), shape_width if width is None else width)
                       for name, width in COLUMNS}

    def _line(self, cells: Dict[str, str]) -> str:
        parts = []
        for name, _ in COLUMNS:
            cell, width = cells.get(name, ""), self.widths[name]
            parts.append(cell.rjust(width) if name in RIGHT_ALIGNED else cell.ljust(width))
        return "  ".join(parts).rstrip()

    def header(self) -> None:
        print(self._line({name: name for name, _ in COLUMNS}), file=self.out)
        print("-" * len(self._line({n: "x" * self.widths[n] for n, _ in COLUMNS})), file=self.out)

    def row(self, r: Result) -> None:
        if r.agrees is None:
            check = "reference"
        else:
            check = ("ok" if r.agrees else "MISMATCH") + f" {r.max_abs_diff:.1e}"
        note = r.note
        if r.gather_ms is not None:
            note = "; ".join(x for x in (f"gather {r.gather_ms:.3g} ms", note) if x)
        print(self._line({
            "suite": r.suite, "shape": r.shape, "dtype": r.dtype, "impl": r.impl,
            "ms": f"{r.time_ms:.3f}",
            "throughput": f"{r.throughput:.3g} {r.throughput_unit}",
            "% peak": "" if r.pct_of_peak is None else f"{r.pct_of_peak:.1f}",
            "fastattn x": "" if r.ratio is None else f"{r.ratio:.2f}" + ("" if r.agrees else "!"),
            "check": check, "note": note,
        }), file=self.out, flush=True)


def group_skips(reports: Sequence[CaseReport]) -> List[str]:
    """The skip notes of all cases, one line per reason: the same skip (a backend missing on
    this device) recurs in every case and would otherwise bury the rest."""
    by_reason: Dict[str, List[str]] = {}
    for report in reports:
        for note in report.skipped:
            name, _, reason = note.partition(": ")
            names = by_reason.setdefault(reason, [])
            if name not in names:
                names.append(name)
    return [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]


def write_json(path: str, info: Dict[str, Any], settings: Settings,
               dtypes: Sequence[torch.dtype], peaks: Peaks, reports: Sequence[CaseReport],
               notes: List[str], distributed: Sequence[Dict[str, Any]] = ()) -> None:
    doc = {
        "machine": info,
        "settings": {**asdict(settings), "dtypes": [dtype_name(d) for d in dtypes]},
        "peaks": asdict(peaks),
        "notes": notes,
        "cases": [],
    }
    if distributed:
        doc["distributed"] = list(distributed)
    for report in reports:
        case, rows = report.case, report.results
        doc["cases"].append({
            "suite": case.suite, "shape": case.label(), "params": case.shape,
            "dtype": case.dtype_name,
            "work": report.work, "work_unit": report.unit,   # of one call: FLOPs or bytes
            "results": [asdict(r) for r in rows],
            # fastattn speed / peer speed, per peer (> 1: fastattn faster).
            "ratios": {r.impl: r.ratio for r in rows if r.ratio is not None},
            "skipped": report.skipped,
        })
    Path(path).write_text(json.dumps(_strict_json(doc), indent=2, allow_nan=False) + "\n")


def _strict_json(value):
    """JSON has no inf/nan: write them as strings ("inf") rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value
