"""Benchmark (not a test): plant every attack-zoo family on the embedded digits default and
measure the deployed model's ASR with the true trigger(s).

    OMP_NUM_THREADS=1 .venv/bin/python bench/attack_zoo.py              # all image families, seeds 0-2
    .venv/bin/python bench/attack_zoo.py --families patch blend --seeds 0 --moderate 0

The scenario stages run in process with params.yaml's defaults (prepare -> foundation ->
attack), the attack's trigger replaced by `{family, seed}`; each family is also planted once
(seed 0) with `--moderate` BadEncoder epochs, a weaker backdoor. ASR, clean accuracy and
the rest come from the attack stage's own measurement (mudjack.metrics.evaluate). Writes
bench/results/attack_zoo_digits.json. Trigger recovery and repair are not measured here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mudjack.attacks.zoo import family_names  # noqa: E402
from mudjack.data import LabelledSet, Task  # noqa: E402
from mudjack.encoders import get_adapter  # noqa: E402
from mudjack.io import write_json  # noqa: E402
from mudjack.training import PretrainParams, pretrain_encoder  # noqa: E402
from stages.attack import Planted, plant  # noqa: E402
from stages.config import PipelineParams, TriggerParams, load_params  # noqa: E402
from stages.foundation import adapter_config  # noqa: E402
from stages.prepare import split_sources  # noqa: E402


def digits_default(params: PipelineParams) -> tuple[LabelledSet, Task]:
    """The prepare stage's provider data and task for params.yaml."""
    provider, train, test = split_sources(params.prepare, params.seed)
    classes = list(range(int(max(train.y.max(), test.y.max())) + 1))
    return provider, Task(params.prepare.task, classes, train, test)


def foundation(params: PipelineParams, provider: LabelledSet) -> tuple[torch.nn.Module, object]:
    """The foundation stage's clean encoder, trained on the provider's data."""
    cfg = params.foundation
    adapter = get_adapter(cfg.adapter, adapter_config(cfg, provider))
    train = PretrainParams(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size)
    return pretrain_encoder(adapter, provider, int(provider.y.max()) + 1, train, params.seed), adapter


def with_attack(params: PipelineParams, family: str, seed: int, epochs: int) -> PipelineParams:
    attack = params.attack.model_copy(update={"trigger": TriggerParams(family=family, seed=seed),
                                              "epochs": epochs})
    return params.model_copy(update={"attack": attack})


def zoo_entries(families: list[str], seeds: list[int], epochs: int, moderate: int) -> list[tuple]:
    """(family, seed, epochs): every family and seed at the scenario's epochs, then each family
    once (first seed) at `moderate` epochs (0: none)."""
    entries = [(f, s, epochs) for f in families for s in seeds]
    return entries + [(f, seeds[0], moderate) for f in families if moderate]


def row(family: str, seed: int, epochs: int, planted: Planted, seconds: float) -> dict:
    """One result: the trigger(s) as drawn and the deployed model's numbers for each."""
    triggers = [{"target": target, "pixels": t.pixels, "max_alpha": round(float(t.alpha.max()), 3)}
                for t, target in planted.pairs]
    metrics = [{k: round(v, 4) for k, v in m.items()} for m in planted.metrics]
    return {"family": family, "seed": seed, "epochs": epochs, "triggers": triggers,
            "metrics": metrics, "attack_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=family_names("image"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--moderate", type=int, default=3, help="epochs of the weaker attacks (0: none)")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    torch.set_num_threads(max(params.threads, 1))
    provider, task = digits_default(params)
    clean, adapter = foundation(params, provider)
    rows = []
    for family, seed, epochs in zoo_entries(args.families, args.seeds, params.attack.epochs, args.moderate):
        start = time.perf_counter()
        planted = plant(with_attack(params, family, seed, epochs), clean, adapter, provider.x, task)
        rows.append(row(family, seed, epochs, planted, time.perf_counter() - start))
        asr = " ".join(f"{m['asr']:.3f}" for m in planted.metrics)
        print(f"{family} seed {seed} epochs {epochs}: asr {asr} clean_acc "
              f"{planted.metrics[0]['clean_acc']:.3f} ({rows[-1]['attack_seconds']}s)", flush=True)
    write_json(ROOT / "bench" / "results" / "attack_zoo_digits.json",
               {"scenario": "digits (params.yaml defaults)", "threads": torch.get_num_threads(),
                "command": " ".join(["bench/attack_zoo.py", *sys.argv[1:]]), "rows": rows})


if __name__ == "__main__":
    main()
