"""Base for typed parameter sections: an unknown key, a wrong type or a value out of range is
an error naming it; NaN and infinity are refused everywhere.

Also the one reader of parameter YAML files: bounded in size, no aliases (an alias bomb would
expand to billions of nodes before any check could run), one-line `ParamsError`s.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mudjack.safepath import one_line, read_bounded

MAX_PARAMS_BYTES = 1 << 20  # params.yaml is a few KiB; anything near this is not parameters

# Range-checked numbers the parameter sections share.
Epochs = Annotated[int, Field(ge=1, le=100_000)]
BatchSize = Annotated[int, Field(ge=1, le=1 << 20)]
Count = Annotated[int, Field(ge=0)]                          # 0 usually means "all" or "off"
LearningRate = Annotated[float, Field(gt=0, le=100)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Dropout = Annotated[float, Field(ge=0, lt=1)]
Momentum = Annotated[float, Field(ge=0, lt=1)]
NonNegative = Annotated[float, Field(ge=0, le=1e6)]              # a loss weight, a tolerance
WeightDecay = Annotated[float, Field(ge=0, le=1)]  # past 1 the weights shrink faster than they learn
# where a method trains: auto (CUDA when present), cpu, cuda or cuda:<index>
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")]
Width = Annotated[int, Field(ge=1, le=65_536)]               # a layer's size
Seed = Annotated[int, Field(ge=0, lt=1 << 32)]               # numpy seeds are 32-bit


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        """`epochs: yes` is YAML's true, which pydantic would take as 1."""
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError(f"a number, not {value}")
        return value


class ParamsError(ValueError):
    """A parameter file that cannot be used; the message is one line naming the file and key."""


MAX_ERRORS_SHOWN = 10  # of a file with thousands of bad keys, the first few say enough


def describe_errors(err: ValidationError) -> str:
    """Pydantic's errors on one line: `key.path: problem (got value)`, separated by `; `; past
    MAX_ERRORS_SHOWN, how many more there are."""
    errors = err.errors()
    parts = [_describe(error) for error in errors[:MAX_ERRORS_SHOWN]]
    if len(errors) > MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more errors")
    return one_line("; ".join(parts))


def _describe(error: Any) -> str:
    where = "".join(f"{part}: " if i == len(error["loc"]) - 1 else f"{part}."
                    for i, part in enumerate(error["loc"]))
    problem = error["msg"].removeprefix("Value error, ")
    if not isinstance(error.get("input"), dict):  # a whole section would say nothing
        problem += f" (got {reprlib.repr(error.get('input'))})"  # bounded, however big
    return where + problem


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that stops at the first alias, before any node is built from it, and takes
    only names as keys, each once: PyYAML's last-wins would let a second `patch:` section at
    the end of the file replace the first without a word."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases are not allowed (*{event.anchor})", event.start_mark)
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        _refuse_yaml11_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        _refuse_yaml11_number(node)
        return super().construct_yaml_float(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            problem = (f"a key must be a name, not {reprlib.repr(key)}" if not isinstance(key, str)
                       else f"the key {key!r} is given twice" if key in seen else None)
            if problem:
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# the constructor table maps tags to SafeLoader's own functions, so the overrides are registered
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)


def _refuse_yaml11_number(node: yaml.ScalarNode) -> None:
    """YAML 1.1 reads `1:30` as 90 (base 60) and `010` as 8 (octal): nobody writing a seed or
    an epoch count means either, so the file is refused rather than silently misread."""
    digits = node.value.lstrip("+-").replace("_", "")
    if ":" in digits:
        problem = f"{node.value!r} is a base-60 number in YAML 1.1; write it out or quote it"
    elif len(digits) > 1 and digits[0] == "0" and digits[1].isdigit() and "." not in digits:
        problem = f"{node.value!r} is an octal number in YAML 1.1; drop the leading zero or quote it"
    else:
        return
    raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


def _yaml_problem(err: Exception) -> str:
    """One line: what is wrong and where (PyYAML's own message spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    if isinstance(err, yaml.MarkedYAMLError) and mark is not None:
        return f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


def read_params_yaml(path: str | Path) -> dict[str, Any]:
    """A parameter YAML file as a mapping (empty file: {}); any problem is a ParamsError."""
    try:
        text = read_bounded(path, limit=MAX_PARAMS_BYTES).decode("utf-8")
        raw = yaml.load(text, Loader=_StrictLoader) or {}  # noqa: S506 (a SafeLoader subclass)
    except (OSError, ValueError, yaml.YAMLError) as err:  # ValueError: not UTF-8, a NUL in the path
        raise ParamsError(f"{one_line(path)}: {_yaml_problem(err)}") from None
    except RecursionError:
        raise ParamsError(f"{one_line(path)}: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{one_line(path)}: expected a mapping of sections, got {type(raw).__name__}")
    return raw
