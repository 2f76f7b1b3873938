"""A dataclass config that round-trips through JSON (checkpoint metadata)."""

from __future__ import annotations

from dataclasses import asdict, fields


class JSONConfig:
    """Mixin for config dataclasses stored as JSON inside checkpoints.

    ``to_dict`` turns tuples into lists (what JSON gives back); ``from_dict``
    refuses keys the class does not know, so a checkpoint written by another
    version of the code fails loudly instead of being half-read.
    """

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)
