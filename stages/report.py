"""Final stage: gather the stage metrics into reports/metrics.json and the before/after plot."""

from __future__ import annotations

from mudjack.io import read_json, write_json

RETRAIN, PATCH, EXPORT = "reports/retrain.json", "reports/patch.json", "reports/export.json"
METRICS, PLOT = "reports/metrics.json", "reports/before_after.json"
MODELS = ("backdoored", "patched")


def main() -> None:
    retrain, patch, export = read_json(RETRAIN), read_json(PATCH), read_json(EXPORT)
    tasks = {name: {m: result[m] for m in MODELS} for name, result in retrain["tasks"].items()}
    metrics = {"tasks": tasks, "export": {"max_abs_diff": export["max_abs_diff"]},
               "patch": {"seconds": patch["seconds"], "method": patch["method"],
                         "bugs": patch["bugs"]}}
    rows = [{"metric": f"{name} {metric} ({model})", "value": value}
            for name, result in tasks.items() for model in MODELS
            for metric, value in result[model].items() if value is not None]
    write_json(METRICS, metrics)
    write_json(PLOT, rows)
    for name, result in tasks.items():
        print(f"report: {name}: " + "; ".join(
            f"{m}: " + ", ".join(f"{k} {v:.3f}" for k, v in result[m].items() if v is not None)
            for m in MODELS))


if __name__ == "__main__":
    main()
