"""Damaged text model folders (config.json, tokenizer.json of a tiny BERT): each is refused with
a one-line WeightsError naming the file when the adapter is made, so validate, intake and patch
stop at once instead of failing every report as an internal error or crashing in retrain."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mudjack.encoders import get_adapter, read_adapter, save_encoder
from mudjack.encoders.text import MINILM_PACKAGE, MODEL_ROOTS_ENV
from mudjack.safeload import WeightsError
from tests.helpers.text import write_tiny_bert

Mutation = Callable[[Path], None]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pristine") / "model"
    write_tiny_bert(folder)
    return folder


@pytest.fixture
def model(pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the tiny BERT, inside an allowed model root."""
    monkeypatch.setenv(MODEL_ROOTS_ENV, str(tmp_path))
    return Path(shutil.copytree(pristine, tmp_path / "model"))


def edit_config(**changes: object) -> Mutation:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))

    return edit


def write_tokenizer(text: str) -> Mutation:
    return lambda folder: (folder / "tokenizer.json").write_text(text)


def drop_unknown_token(folder: Path) -> None:
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["model"]["unk_token"] = "[NOPE]"  # a vocabulary without its unknown token
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))


def refused(folder: Path, fragment: str) -> str:
    with pytest.raises(WeightsError) as caught:
        get_adapter("hf_text", {"folder": str(folder), "max_length": 32})
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message
    return message


TOKENIZERS: dict[str, tuple[Mutation, str]] = {
    "empty": (write_tokenizer(""), "EOF"),
    "not JSON": (write_tokenizer("hello"), "expected value"),
    "an empty object": (write_tokenizer("{}"), "Model missing"),
    "nested 100k deep": (write_tokenizer("[" * 100_000 + "]" * 100_000), "invalid type"),
    "no [UNK] in the vocabulary": (drop_unknown_token, "Missing [UNK]"),
}


@pytest.mark.parametrize("case", TOKENIZERS)
def test_a_damaged_tokenizer_is_refused_naming_it(case: str, model: Path) -> None:
    mutate, reason = TOKENIZERS[case]
    mutate(model)
    message = refused(model, "tokenizer.json: not a usable tokenizer")
    assert reason in message


CONFIGS: dict[str, tuple[dict[str, object], str]] = {
    "unknown hidden_act": ({"hidden_act": "bogus"}, "hidden_act: not an activation"),
    "negative pad_token_id": ({"pad_token_id": -1}, "pad_token_id"),
    "pad_token_id past the vocabulary": ({"pad_token_id": 999}, "pad_token_id 999 is outside the vocabulary"),
    "layer_norm_eps 0": ({"layer_norm_eps": 0}, "layer_norm_eps"),
    "hidden_size a string": ({"hidden_size": "32"}, "hidden_size: Input should be a valid integer"),
    "t5 model_type": ({"model_type": "t5"}, "cannot use it (StrictDataclassFieldValidationError"),
    "unknown model_type": ({"model_type": "bogus"}, "transformers cannot use it (ValueError"),
    "more tokens than embedding rows": ({"vocab_size": 10}, "tokenizer.json: 41 tokens; the model embeds 10"),
    "pad id past the tokens": ({"vocab_size": 99, "pad_token_id": 50}, "tokenizer.json: no token of id"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_a_config_transformers_cannot_build_is_refused_naming_it(case: str, model: Path) -> None:
    changes, reason = CONFIGS[case]
    edit_config(**changes)(model)
    message = refused(model, reason)
    assert ("tokenizer.json" if "tokenizer" in reason else "config.json") in message


def test_a_config_failing_only_in_the_model_build_is_a_weights_error(model: Path) -> None:
    edit_config(num_attention_heads=3)(model)  # 32 wide: transformers refuses when building
    adapter = get_adapter("hf_text", {"folder": str(model), "max_length": 32})
    with pytest.raises(WeightsError, match=r"config.json: transformers cannot use it .*attention heads"):
        adapter.load_pretrained()


def test_an_encoder_over_a_damaged_folder_is_refused_from_its_header(model: Path, tmp_path: Path) -> None:
    """What validate reads (read_adapter) already refuses it, naming the encoder and the folder file."""
    adapter = get_adapter("hf_text", {"folder": str(model), "max_length": 32})
    save_encoder(adapter.load_pretrained(), adapter, tmp_path / "encoder.safetensors")
    write_tokenizer("{}")(model)
    with pytest.raises(WeightsError, match=r"encoder.safetensors: .*tokenizer.json: not a usable tokenizer"):
        read_adapter(tmp_path / "encoder.safetensors")


def test_a_model_package_that_cannot_be_imported_is_a_weights_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, MINILM_PACKAGE, None)  # importing it raises ImportError
    with pytest.raises(WeightsError, match=f"minilm config: package '{MINILM_PACKAGE}' cannot be imported"):
        get_adapter("minilm", {})
