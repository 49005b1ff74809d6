"""Benchmark (not a test): plant every attack-zoo family on a scenario's encoder and measure
the deployed model's ASR with the true trigger(s); with `--repair`, also intake and patching.

    OMP_NUM_THREADS=1 .venv/bin/python bench/attack_zoo.py              # digits, image families, seeds 0-2
    .venv/bin/python bench/attack_zoo.py --families patch blend --seeds 0 --moderate 0 --repair
    .venv/bin/python bench/attack_zoo.py --scenario resnet20-gtsrb --seeds 0 1 --moderate 0 \\
        --epochs attack=4 patch=4 --repair

The scenario's stages run in process (prepare -> foundation -> attack) with params.yaml's
defaults and the scenario file merged in, the attack's trigger replaced by `{family, seed}`;
each family is also planted once (first seed) with `--moderate` BadEncoder epochs, a weaker
backdoor. `--epochs STAGE=N` sets a stage's epochs (attack, patch, retrain, deployed_head),
the only settings besides data paths a zoo run may change; `--set KEY.PATH=VALUE` sets any
other (a departure from the defaults, kept in the recorded command). ASR, clean accuracy and the rest
come from the attack stage's own measurement (mudjack.metrics.evaluate). Each planted
encoder and its deployed head are cached in bench/.cache/attack_zoo/ under a hash of every
setting that made them, so a rerun only redoes intake and repair. Writes
bench/results/attack_zoo_<scenario>.json (`--out` to name it otherwise).

`--repair` runs the scenario's intake on `attack.n_reports` genuine reports per trigger
(triggered test inputs of other classes the deployed model sends to its target): accepted or
why not, the recovered trigger against the true one (IoU, coverage, correlation of α·t),
the reversal candidate chosen, seconds. The accepted bugs are patched with the scenario's
patch method; `retrain.heads` fresh heads (the retrain settings; metrics their mean) on the
backdoored and on the patched encoder give the ASR with the true trigger and the clean-accuracy
drop. `--intake` runs the
intake alone (no patch: a check of acceptance, recovery and intake seconds). `--oracle` patches
the accepted reports with their true triggers instead: what the patch reaches when recovery is
perfect, to tell a recovery miss from a patch that cannot remove the backdoor.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from mudjack.attacks.zoo import family_names  # noqa: E402
from mudjack.data import Task  # noqa: E402
from mudjack.deployed import Deployed  # noqa: E402
from mudjack.encoders import EncoderAdapter, get_adapter, load_encoder, save_encoder  # noqa: E402
from mudjack.evaluation import AttackSpec, evaluate_heads, retrain_and_evaluate, retrain_heads  # noqa: E402
from mudjack.heads import Head, load_head, save_head  # noqa: E402
from mudjack.intake import intake_report  # noqa: E402
from mudjack.io import write_json  # noqa: E402
from mudjack.loaders import limit_stratified  # noqa: E402
from mudjack.patching import PatchInputs, run_patch  # noqa: E402
from mudjack.reports import BugReport  # noqa: E402
from mudjack.triggers import TextTrigger, Trigger  # noqa: E402
from pipeline.scenarios import RUNS, deep_merge, scenario_params  # noqa: E402
from stages.attack import Planted, attacker_inputs, measure, pick_genuine, plant, trigger_pairs  # noqa: E402
from stages.config import PipelineParams, TriggerParams  # noqa: E402
from stages.foundation import adapter_config, clean_encoder  # noqa: E402
from stages.prepare import make_task, split_sources  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "attack_zoo"
EPOCH_KEYS = {"attack": ("attack",), "patch": ("patch",), "retrain": ("retrain",),
              "deployed_head": ("attack", "deployed_head")}


@dataclass
class Zoo:
    """A scenario's data and clean encoder, ready to plant zoo backdoors on."""

    name: str
    params: PipelineParams
    task: Task
    attacker: np.ndarray   # what BadEncoder trains on
    shadow: np.ndarray     # what patching trains on
    clean: nn.Module
    adapter: EncoderAdapter
    clean_heads: list[Head] | None = None  # `retrain.heads` fresh heads on the never-attacked
                                           # encoder, made when first needed


def set_overrides(pairs: list[str]) -> dict[str, Any]:
    """`intake.reverse.method=auto` (values read as YAML) as nested params overrides."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        path, sep, value = pair.partition("=")
        if not sep or not path:
            raise SystemExit(f"--set takes KEY.PATH=VALUE: {pair!r}")
        *parents, leaf = path.split(".")
        section = overrides
        for key in parents:
            section = section.setdefault(key, {})
        section[leaf] = yaml.safe_load(value)
    return overrides


def epoch_overrides(pairs: list[str]) -> dict[str, Any]:
    """`attack=4 patch=4` as nested params overrides (a stage's `epochs` only)."""
    dotted = []
    for pair in pairs:
        stage, _, value = pair.partition("=")
        if stage not in EPOCH_KEYS or not value.isdigit():
            raise SystemExit(f"--epochs takes STAGE=N with STAGE one of {sorted(EPOCH_KEYS)}: {pair!r}")
        dotted.append(".".join([*EPOCH_KEYS[stage], "epochs"]) + f"={value}")
    return set_overrides(dotted)


def load_zoo(name: str, overrides: dict[str, Any]) -> Zoo:
    """The scenario's prepare and foundation stages, run in process from its workspace
    (runs/<name>/, where its relative data paths point)."""
    params = PipelineParams(**scenario_params(ROOT, name, overrides))
    workspace = ROOT / RUNS / name
    workspace.mkdir(parents=True, exist_ok=True)
    os.chdir(workspace)
    torch.set_num_threads(max(params.threads, 1))
    provider, train, test = split_sources(params.prepare, params.seed)
    task = make_task(params.prepare.task, train, test)
    shadow = limit_stratified(provider, params.prepare.shadow_limit, params.seed).x
    attacker = attacker_inputs({"x": provider.x}, params.attack.samples, params.seed)
    adapter = get_adapter(params.foundation.adapter, adapter_config(params.foundation, provider))
    clean = clean_encoder(params.foundation, adapter, provider, seed=params.seed)[0]
    return Zoo(name, params, task, attacker, shadow, clean, adapter)


def with_attack(params: PipelineParams, family: str, seed: int, epochs: int) -> PipelineParams:
    attack = params.attack.model_copy(update={"trigger": TriggerParams(family=family, seed=seed),
                                              "epochs": epochs})
    return params.model_copy(update={"attack": attack})


def cache_key(zoo: Zoo, params: PipelineParams) -> str:
    """A hash of every setting the planted encoder and its deployed head depend on (not the
    device BadEncoder trains on)."""
    dumped = params.model_dump(mode="json", exclude={"attack": {"device"}})
    parts = {k: dumped[k] for k in ("seed", "prepare", "foundation", "attack")}
    parts["retrain_head"] = [params.retrain.hidden, params.retrain.dropout]
    text = json.dumps({"scenario": zoo.name, **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def planted(zoo: Zoo, params: PipelineParams) -> tuple[Planted, bool]:
    """The backdoored encoder and deployed head, from the cache when it has them; (planted, cached)."""
    folder = CACHE / zoo.name / cache_key(zoo, params)
    encoder_file, head_file = folder / "encoder.safetensors", folder / "head.safetensors"
    if not head_file.is_file():
        result = plant(params, zoo.clean, zoo.adapter, zoo.attacker, zoo.task)
        # Written beside and renamed into place: two zoo runs sharing the cache never read a
        # half-written folder (the later rename loses to the earlier one; both are the same).
        partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
        partial.mkdir(parents=True, exist_ok=True)
        save_encoder(result.backdoored, zoo.adapter, partial / encoder_file.name)
        save_head(result.head, partial / head_file.name)
        try:
            partial.rename(folder)
        except OSError:
            shutil.rmtree(partial)
        return result, False
    backdoored, head = load_encoder(encoder_file)[0], load_head(head_file)
    pairs = trigger_pairs(zoo.adapter, params.attack, zoo.task)
    measured = measure(backdoored, zoo.adapter, head, zoo.task.test, pairs)
    return Planted(backdoored, head, pairs, *measured), True


def zoo_entries(families: list[str], seeds: list[int], epochs: int, moderate: int) -> list[tuple]:
    """(family, seed, epochs): every family and seed at the scenario's epochs, then each family
    once (first seed) at `moderate` epochs (0: none)."""
    entries = [(f, s, epochs) for f in families for s in seeds]
    return entries + [(f, seeds[0], moderate) for f in families if moderate]


def never_attacked(zoo: Zoo, trigger: Trigger, target: int) -> dict[str, float | None]:
    """The never-attacked encoder's ASR, flip ASR and anti flip with a true trigger, under fresh
    heads trained as the repair's are (their mean): the floor a repair can reach, since a trigger
    can move a clean model's predictions to the target by itself (a scatter of bright pixels on
    GTSRB does), or away from it (a noise blend hides some of the target class's content)."""
    params = zoo.params
    if zoo.clean_heads is None:
        zoo.clean_heads = retrain_heads(zoo.clean, zoo.adapter, zoo.task, params.retrain,
                                        seeds=params.retrain.seeds(params.seed))
    attack = AttackSpec(trigger, target, "truth")
    found = evaluate_heads(zoo.clean, zoo.adapter, zoo.clean_heads, zoo.task, attack)
    return {f"{name}_never_attacked": _round(found.get(name)) for name in ("asr", "flip_asr", "anti_flip")}


def row(zoo: Zoo, family: str, seed: int, epochs: int, result: Planted, seconds: float, cached: bool) -> dict:
    """One result: the trigger(s) as drawn, the never-attacked encoder's ASR with each, and the
    deployed model's numbers for each."""
    triggers = [{"target": target, **trigger_fields(t), **never_attacked(zoo, t, target)}
                for t, target in result.pairs]
    metrics = [{k: round(v, 4) for k, v in m.items()} for m in result.metrics]
    return {"family": family, "seed": seed, "epochs": epochs, "triggers": triggers,
            "metrics": metrics, "attack_seconds": None if cached else round(seconds, 1)}


def trigger_fields(trigger: Trigger | TextTrigger) -> dict[str, Any]:
    """What a result row says of a planted trigger: its size and strongest alpha (and a warp's
    largest offset in pixels), or its words and place for text."""
    if isinstance(trigger, TextTrigger):
        return {"pixels": trigger.pixels, "words": list(trigger.words), "position": trigger.position}
    moved = {"max_offset": round(float(np.abs(trigger.flow).max()), 3)} if trigger.flow is not None else {}
    return {"pixels": trigger.pixels, "max_alpha": round(float(trigger.alpha.max()), 3), **moved}


TRUTH_KEYS = ("iou", "coverage", "correlation", "mask_pixels")


def report_id(trigger: int, test_index: int) -> str:
    """A zoo report's id: which planted trigger it carries and which test input it is."""
    return f"t{trigger}_{test_index}"


def trigger_index(report: str) -> int:
    """The planted trigger a report_id names."""
    return int(report.split("_")[0][1:])


def intake_rows(zoo: Zoo, result: Planted) -> tuple[list, list]:
    """Intake of `attack.n_reports` genuine reports per trigger: (accepted bugs, one row each)."""
    params, task, adapter = zoo.params, zoo.task, zoo.adapter
    deployed = Deployed(result.backdoored, adapter, {task.name: result.head})
    rng, bugs, rows = np.random.default_rng(params.seed), [], []
    triggered = zip(result.pairs, result.triggered, strict=True)
    for index, ((trigger, target), predicted) in enumerate(triggered):
        for i in pick_genuine(rng, task.test.y, predicted, target, params.attack.n_reports):
            report = BugReport(report_id(index, i), task.name, int(task.test.y[i]),
                               adapter.stamp(task.test.x[i], trigger), None)
            start = time.perf_counter()
            decision, bug = intake_report(report, deployed, {task.name: task}, params=params.intake,
                                          truth=trigger, seed=params.seed)
            numbers = decision.numbers
            reversal = numbers.get("reversal", {})
            rows.append({"trigger": index, "accepted": decision.accepted,
                         "why": None if decision.accepted else decision.reasons[0],
                         **{k: _round(numbers.get(k)) for k in TRUTH_KEYS},
                         "chosen": reversal.get("chosen", params.intake.reverse.method),
                         **({"words": numbers["trigger_words"]} if "trigger_words" in numbers else {}),
                         # where the key check or the departure check ran
                         **{k: (numbers.get("verification") or {}).get(k) for k in ("key", "departure")},
                         **candidate_scores(reversal),
                         "alternates_coverage": [_round(t.get("coverage")) for t in
                                                 numbers.get("alternates_truth", [])],
                         **_flow_cosines(numbers),
                         "seconds": round(time.perf_counter() - start, 1),
                         "phase_seconds": numbers.get("phase_seconds")})
            bugs += [bug] if bug is not None else []
    return bugs, rows


def _flow_cosines(numbers: dict[str, Any]) -> dict[str, Any]:
    """A warp's truth numbers: the chosen trigger's and each alternate's flow cosine to it."""
    if "flow_cosine" not in numbers:
        return {}
    alternates = numbers.get("alternates_truth", [])
    return {"flow_cosine": _round(numbers["flow_cosine"]),
            "alternates_flow_cosine": [_round(t.get("flow_cosine")) for t in alternates]}


def candidate_scores(reversal: dict[str, Any]) -> dict[str, Any]:
    """`auto`'s fitted candidates as {name: [effect, score]} and the alternates it kept (why a
    candidate won is in these numbers); empty for the other methods."""
    if "candidates" not in reversal:
        return {}
    scores = {name: [found["effect"], found["score"]] for name, found in reversal["candidates"].items()}
    return {"candidates": scores, "alternates": reversal.get("alternates", [])}


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def repair(zoo: Zoo, result: Planted, bugs: list) -> dict[str, Any]:
    """Patch with the accepted bugs; per trigger, fresh heads' ASR (true trigger) and clean accuracy
    on the backdoored and the patched encoder."""
    if not bugs:
        return {"patched": False}
    params, start = zoo.params, time.perf_counter()
    inputs = PatchInputs(copy.deepcopy(result.backdoored), zoo.adapter, zoo.shadow, bugs,
                         {zoo.task.name: zoo.task.train})
    method, settings = params.patch.for_modality(zoo.adapter.modality)
    patched = run_patch(method, inputs, settings, seed=params.seed).encoder
    seconds = round(time.perf_counter() - start, 1)
    per_trigger, encoders = [], (result.backdoored, patched)
    for trigger, target in result.pairs:
        attack = AttackSpec(trigger, target, "truth")
        before, after = (retrain_and_evaluate(encoder, zoo.adapter, zoo.task, attack, params.retrain,
                                              seed=params.seed, heads=params.retrain.heads)[1]
                         for encoder in encoders)
        per_trigger.append({"asr_backdoored": _round(before["asr"]), "asr_patched": _round(after["asr"]),
                            "clean_backdoored": _round(before["clean_acc"]),
                            "clean_drop": _round(before["clean_acc"] - after["clean_acc"]),
                            **{f"{name}_{k}": _round(m.get(name)) for name in ("target_tba", "anti_flip")
                               for k, m in (("backdoored", before), ("patched", after))}})
    return {"patched": True, "patch_seconds": seconds, "per_trigger": per_trigger}


def with_truth(bugs: list, pairs: list) -> list:
    """The accepted bugs with their report's true trigger in place of the reversed one and no
    alternates (`--oracle`: what patching reaches when recovery is perfect)."""
    return [dataclasses.replace(bug, trigger=pairs[trigger_index(bug.id)][0], alternates=())
            for bug in bugs]


def run_entry(zoo: Zoo, family: str, seed: int, epochs: int, *, intake_too: bool, repair_too: bool,
              oracle: bool = False) -> dict:
    start = time.perf_counter()
    result, cached = planted(zoo, with_attack(zoo.params, family, seed, epochs))
    entry = row(zoo, family, seed, epochs, result, time.perf_counter() - start, cached)
    asr = " ".join(f"{m['asr']:.3f}" for m in result.metrics)
    print(f"{family} seed {seed} epochs {epochs}: asr {asr} clean_acc {result.metrics[0]['clean_acc']:.3f} "
          f"({'cached' if cached else str(entry['attack_seconds']) + 's'})", flush=True)
    if intake_too or repair_too:
        bugs, entry["intake"] = intake_rows(zoo, result)
        print(f"  intake {entry['intake']}", flush=True)
    if repair_too:
        entry["repair"] = repair(zoo, result, with_truth(bugs, result.pairs) if oracle else bugs)
        print(f"  repair {entry['repair']}", flush=True)
    return entry


def _fmt(values: list[Any]) -> str:
    return ", ".join("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)


def table_line(entry: dict) -> str:
    """One markdown row: the attack, its intake (accepted, chosen, recovery), its repair."""
    intake, repaired = entry.get("intake", []), entry.get("repair", {}).get("per_trigger", [])
    accepted = f"{sum(r['accepted'] for r in intake)}/{len(intake)}" if intake else "-"
    kept = [r for r in intake if r["accepted"]]
    chosen = ", ".join(sorted({r["chosen"] for r in kept})) or "-"
    cells = [entry["family"], str(entry["seed"]), str(entry["epochs"]),
             _fmt([m["asr"] for m in entry["metrics"]]),
             _fmt([t.get("asr_never_attacked") for t in entry.get("triggers", [])]) or "-", accepted, chosen,
             _fmt([r["coverage"] for r in kept]), _fmt([r["correlation"] for r in kept]),
             _fmt([r["asr_patched"] for r in repaired]), _fmt([r["clean_drop"] for r in repaired]),
             f"{np.median([r['seconds'] for r in intake]):.1f}" if intake else "-"]
    return "| " + " | ".join(cells) + " |"


def table(result: dict) -> str:
    """The markdown table of a result file (for the results log)."""
    head = ("| family | seed | epochs | asr (true trigger) | asr, never-attacked encoder | reports accepted "
            "| chosen | coverage | correlation | patched asr | clean drop | intake s (median) |")
    return "\n".join([head, "|" + "---|" * 12, *(table_line(entry) for entry in result["rows"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="digits")
    parser.add_argument("--families", nargs="+", default=family_names("image"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--moderate", type=int, default=3, help="epochs of the weaker attacks (0: none)")
    parser.add_argument("--epochs", nargs="*", default=[], metavar="STAGE=N")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE",
                        help="any other parameter (a departure from the defaults, kept in the command)")
    parser.add_argument("--repair", action="store_true", help="also run intake and patching")
    parser.add_argument("--intake", action="store_true", help="also run intake (no patching)")
    parser.add_argument("--oracle", action="store_true",
                        help="with --repair: patch the accepted reports with their true triggers")
    parser.add_argument("--out", default="", help="result file name (default attack_zoo_<scenario>.json)")
    parser.add_argument("--table", type=Path, help="only print the markdown table of this result file")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    zoo = load_zoo(args.scenario, deep_merge(set_overrides(args.set), epoch_overrides(args.epochs)))
    entries = zoo_entries(args.families, args.seeds, zoo.params.attack.epochs, args.moderate)
    out = ROOT / "bench" / "results" / (args.out or f"attack_zoo_{args.scenario}.json")
    result = {"scenario": args.scenario, "threads": torch.get_num_threads(), "oracle": args.oracle,
              "command": " ".join(["bench/attack_zoo.py", *sys.argv[1:]]), "rows": []}
    for family, seed, epochs in entries:  # written after each entry: a long run keeps what it did
        result["rows"].append(run_entry(zoo, family, seed, epochs, intake_too=args.intake,
                                         repair_too=args.repair, oracle=args.oracle))
        write_json(out, result)


if __name__ == "__main__":
    main()
