"""Base for typed parameter sections: an unknown key or a wrong type is an error naming it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
