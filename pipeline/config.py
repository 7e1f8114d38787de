"""Typed configuration: the engine's own settings and the YAML loader every stage uses.

Workflow files are read with ``yaml.safe_load`` only and validated into
pydantic models that forbid unknown keys, so a typo is an error naming the
exact key path (``segment.seeds.h_max``) instead of a silently ignored option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

__all__ = ["StrictModel", "ComputeConfig", "load_yaml", "validate_config", "format_validation_error"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ComputeConfig(StrictModel):
    """Where and how blocks run.

    Attributes
    ----------
    scheduler : str
        ``local`` (start a ``distributed.LocalCluster``), ``synchronous`` (run
        blocks one by one in this process: tests and debugging), or the address
        of an existing Dask scheduler (``tcp://host:8786``).
    n_workers, threads_per_worker : int
        Size of the local cluster; ``n_workers: 0`` means one per CPU core.
    device : str
        ``cpu``, ``gpu`` or ``auto`` (GPU when CuPy sees one).
    block_shape : list of int
        Write-region shape (z, y, x) of a block; a multiple of the chunk shape.
    retries : int
        How often a failed block is retried before the run stops.
    dashboard_address : str
        Where the local cluster serves its dashboard; loopback only unless you
        ask otherwise (``:8787`` for every interface, ``127.0.0.1:0`` for a free port).
    """

    scheduler: str = "local"
    n_workers: int = Field(default=0, ge=0)
    threads_per_worker: int = Field(default=1, ge=1)
    device: Literal["cpu", "gpu", "auto"] = "auto"
    block_shape: tuple[int, int, int] = (64, 128, 128)
    retries: int = Field(default=2, ge=0)
    dashboard_address: str = "127.0.0.1:8787"
    memory_limit: str = "auto"

    @field_validator("block_shape")
    @classmethod
    def _positive(cls, value):
        if any(v <= 0 for v in value):
            raise ValueError(f"every block size must be positive, got {list(value)}")
        return value


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the key path, e.g. ``segment.sigma: ...``."""
    lines = [f"{source}: invalid configuration"]
    for problem in error.errors():
        path = ".".join(str(p) for p in problem["loc"]) or "<top level>"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key")
        elif problem["type"] == "missing":
            lines.append(f"  {path}: required key is missing")
        else:
            lines.append(f"  {path}: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)


def load_yaml(path) -> dict:
    """Read a YAML mapping with ``yaml.safe_load``; clear errors for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such workflow file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def validate_config(model: type[M], data: dict, source: str = "configuration") -> M:
    """Validate ``data`` into ``model``; a :class:`ConfigError` lists every bad key path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
