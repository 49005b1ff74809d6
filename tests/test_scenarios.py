import re
from pathlib import Path

import pytest
import yaml

from mudjack.config import ParamsError
from mudjack.encoders import get_adapter
from pipeline.scenarios import (
    check_scenario,
    deep_merge,
    load_scenario,
    method_settings,
    prepare_workspace,
    scenario_names,
    scenario_params,
    workspace_dvc_yaml,
)
from stages.config import PipelineParams

ROOT = Path(__file__).resolve().parents[1]


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"b": 1, "c": [1]}, "d": 2}
    assert deep_merge(base, {"a": {"c": [2]}, "e": 3}) == {"a": {"b": 1, "c": [2]}, "d": 2, "e": 3}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 2}


@pytest.mark.parametrize("name", scenario_names(ROOT))
def test_every_scenario_gives_valid_params_for_every_method(name):
    PipelineParams(**scenario_params(ROOT, name))
    for method in ("mudjacking", "finetune", "super_finetune"):
        params = scenario_params(ROOT, name, method_settings(ROOT, name, method))
        assert PipelineParams(**params).patch.method == method


def test_the_required_scenarios_exist():
    assert {"digits", "resnet20-gtsrb", "resnet20-mnist"} <= set(scenario_names(ROOT))


def test_workspace_points_code_dependencies_back_at_the_project(tmp_path):
    for name in ("mudjack", "stages", "pipeline", "scenarios"):
        (tmp_path / name).symlink_to(ROOT / name)
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    workspace = prepare_workspace(tmp_path, "digits", method_settings(tmp_path, "digits", "finetune"))
    assert (workspace / ".dvc").is_dir()
    pipeline = yaml.safe_load((workspace / "dvc.yaml").read_text())
    assert "../../stages/patch.py" in pipeline["stages"]["patch"]["deps"]
    assert "${paths.encoder}" in pipeline["stages"]["patch"]["deps"]
    # every code dependency, a whole folder too, resolves from runs/NAME/ (a bare "mudjack"
    # left as it was broke every scenario's prepare)
    for stage in pipeline["stages"].values():
        for dep in stage["deps"]:
            if dep.split("/")[0] in ("mudjack", "stages", "pipeline"):
                raise AssertionError(f"{dep} not rebased")
            if dep.startswith("../../"):
                assert (workspace / dep).exists(), dep
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    assert params["patch"]["method"] == "finetune" and "views" not in params["patch"]
    assert workspace_dvc_yaml(tmp_path)["stages"].keys() == pipeline["stages"].keys()


def test_a_scenarios_encoder_config_replaces_the_default_adapters():
    """vit-cifar's hf_vision config must not inherit small_cnn's keys (width, feature_dim):
    hf_vision refuses keys it does not know, so a merged config failed the foundation stage."""
    config = scenario_params(ROOT, "vit-cifar")["foundation"]["config"]
    assert config == load_scenario(ROOT, "vit-cifar")["foundation"]["config"]
    adapter = get_adapter("hf_vision", {"input_shape": [32, 32, 3], "mean": [0.5] * 3,
                                        "std": [0.25] * 3, **config})
    assert adapter.feature_dim == 128 and adapter.family.tokens
    # a scenario without its own encoder config keeps the default's
    assert scenario_params(ROOT, "digits")["foundation"]["config"] == {"width": 32, "feature_dim": 64}


def project_with_scenario(root: Path, text: str) -> Path:
    """A project whose scenarios/ holds one scenario, fz, of `text`."""
    (root / "scenarios").mkdir(parents=True)
    (root / "scenarios" / "fz.yaml").write_text(text)
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return root


@pytest.mark.parametrize(("text", "fragment"), [
    ("foundation: 5\n", "foundation must be a mapping of its settings, not int 5"),  # was a TypeError
    ("patch: [1]\n", "patch must be a mapping of its settings, not list [1]"),
    ("- 1\n", "expected a mapping of sections, got list"),
    ("seed: [1\n", "fz.yaml: "),
])
def test_a_scenario_that_is_not_sections_of_settings_is_one_params_error(tmp_path, text, fragment):
    root = project_with_scenario(tmp_path, text)
    with pytest.raises(ParamsError) as caught:
        scenario_params(root, "fz")
    assert str(caught.value).startswith(str(root / "scenarios" / "fz.yaml")) and fragment in str(caught.value)


@pytest.mark.parametrize(("methods", "fragment"), [
    ("[1]", "methods must be a mapping (method: its patch settings), not list"),  # AttributeError
    ("{finetune: 3}", "methods.finetune must be a mapping (method: its patch settings), not int 3"),
])
def test_a_scenarios_methods_entry_must_map_methods_to_settings(tmp_path, methods, fragment):
    root = project_with_scenario(tmp_path, f"methods: {methods}\n")
    with pytest.raises(ParamsError, match=re.escape(fragment)):
        method_settings(root, "fz", "finetune")
    (root / "scenarios" / "fz.yaml").write_text("methods: {finetune: {epochs: 2}}\n")
    assert method_settings(root, "fz", "finetune") == {"patch": {"method": "finetune", "epochs": 2}}


def test_a_scenario_value_of_the_wrong_type_is_one_params_error(tmp_path):
    """`seed: abc` failed only in the first stage, after a Prefect server had started."""
    root = project_with_scenario(tmp_path, "seed: abc\n")
    with pytest.raises(ParamsError, match=r"fz.yaml: invalid parameters: seed: .*\(got 'abc'\)"):
        check_scenario(root, "fz")
    (root / "scenarios" / "fz.yaml").write_text("seed: 3\n")
    check_scenario(root, "fz")
