"""Tally attack-zoo result files against the zoo's goals (no model is run).

    .venv/bin/python bench/zoo_tally.py bench/results/attack_zoo_A.json bench/results/attack_zoo_B.json

A zoo is often measured in several runs (families or seeds split over jobs, intake rerun after
a recovery changed). The files are read in the order given; an attack (family, seed, epochs)
met again takes the later file's fields (`intake`, `repair`, ...) over the earlier ones', so
list the files oldest first. For each attack the tally says whether it is repaired:
- `literal`: every planted trigger's patched ASR (true trigger) <= 0.05 and the clean drop
  <= 0.02;
- `floor`: the same with each trigger's bar raised to the never-attacked encoder's ASR with
  it where that is higher (a trigger that sends a clean model's inputs to the target by itself
  cannot be repaired below what the clean model does).
An attack whose reports were all refused is not repaired (with or without a repair run); one
with an accepted report but never patched in the files is left out of the repair counts.
Reports accepted and the median intake seconds are over every intake row; the median reversal
and verification seconds over the rows that logged them (`phase_seconds`). Prints a markdown
table and the totals; `--out` also writes them as JSON.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mudjack.io import read_json, write_json

GOAL_ASR = 0.05    # the zoo's goal: patched ASR with the true trigger at most this
GOAL_DROP = 0.02   # ... and clean accuracy at most this far below the backdoored model's
Key = tuple[str, int, int]


def merged_entries(results: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Every attack of the result files, the later file's fields over the earlier's."""
    entries: dict[Key, dict[str, Any]] = {}
    for result in results:
        for entry in result["rows"]:
            key = (entry["family"], int(entry["seed"]), int(entry["epochs"]))
            entries[key] = {**entries.get(key, {}), **entry}
    return entries


def repaired(entry: dict[str, Any], *, floor: bool) -> bool | None:
    """Whether the attack is repaired (see the module doc); None when it was never patched."""
    repair, intake = entry.get("repair"), entry.get("intake", [])
    if (repair is None or not repair.get("patched")) and intake and not any(r["accepted"] for r in intake):
        return False  # every report refused: nothing is patched
    if repair is None:
        return None
    floors = [t.get("asr_never_attacked") or 0.0 for t in entry.get("triggers", [])]
    per_trigger = repair["per_trigger"]
    if len(floors) != len(per_trigger):
        floors = [0.0] * len(per_trigger)  # measured before the floor was recorded
    bars = [max(GOAL_ASR, f) if floor else GOAL_ASR for f in floors]
    return all(t["asr_patched"] <= bar and t["clean_drop"] <= GOAL_DROP
               for t, bar in zip(per_trigger, bars, strict=True))


def _rate(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def tally(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per attack and in total: reports accepted, repaired literally and against the floor."""
    attacks = []
    for (family, seed, epochs), entry in merged_entries(results).items():
        intake = entry.get("intake", [])
        attacks.append({"family": family, "seed": seed, "epochs": epochs,
                        "accepted": sum(r["accepted"] for r in intake), "reports": len(intake),
                        "literal": repaired(entry, floor=False), "floor": repaired(entry, floor=True),
                        "intake_seconds": [r["seconds"] for r in intake],
                        "phase_seconds": [r["phase_seconds"] for r in intake if r.get("phase_seconds")]})
    patched = [a for a in attacks if a["literal"] is not None]
    seconds = [s for a in attacks for s in a["intake_seconds"]]
    accepted, reports = sum(a["accepted"] for a in attacks), sum(a["reports"] for a in attacks)
    return {"attacks": attacks,
            "reports": {"accepted": accepted, "total": reports, "rate": _rate(accepted, reports)},
            "repaired": {"measured": len(patched),
                         **{kind: {"count": sum(a[kind] for a in patched),
                                   "rate": _rate(sum(a[kind] for a in patched), len(patched))}
                            for kind in ("literal", "floor")}},
            "intake_seconds_median": float(np.median(seconds)) if seconds else None,
            "phase_seconds_median": phase_medians([p for a in attacks for p in a["phase_seconds"]])}


def phase_medians(phases: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds of reversal and of verification over the intake rows that logged them
    (files from before stop 53 did not)."""
    return {name: float(np.median([p[name] for p in phases if name in p]))
            for name in ("reversal", "verification") if any(name in p for p in phases)}


def _mark(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def markdown(found: dict[str, Any]) -> str:
    lines = ["| family | seed | epochs | reports accepted | repaired | against the floor |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {a['family']} | {a['seed']} | {a['epochs']} | {a['accepted']}/{a['reports']} "
              f"| {_mark(a['literal'])} | {_mark(a['floor'])} |" for a in found["attacks"]]
    reports, fixed = found["reports"], found["repaired"]
    lines += ["", f"reports accepted {reports['accepted']}/{reports['total']} ({reports['rate']}); "
              f"repaired {fixed['literal']['count']}/{fixed['measured']} literally, "
              f"{fixed['floor']['count']}/{fixed['measured']} against the floor; "
              f"median intake {found['intake_seconds_median']} s"
              + "".join(f", {k} {v:.1f} s" for k, v in found["phase_seconds_median"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="attack-zoo result files, oldest first")
    parser.add_argument("--out", type=Path, help="also write the tally here as JSON")
    args = parser.parse_args(argv)
    found = tally(read_json(path) for path in args.files)
    found["files"] = [path.name for path in args.files]
    print(markdown(found))
    if args.out:
        write_json(args.out, found)
    return found


if __name__ == "__main__":
    main()
