"""The base of every policy model: frozen, unknown keys refused (a typo is an
error, never a silently ignored rule), and the helper that reports every
problem a validator found at once."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def raise_all(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))
