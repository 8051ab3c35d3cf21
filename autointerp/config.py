"""The config file: one shared setting for a lab (models, API key variables, prices, label defaults).

Read from `--config PATH`, else `autointerp.toml` in the working directory, else the `[tool.autointerp]`
table of `pyproject.toml` there; none of them: the built-in defaults. Command-line flags override it.

    [models]
    explainer = "openai:gpt-4o-mini"
    simulator = "local:qwen2.5-coder-1.5b"

    [keys]                      # the environment variable holding each backend's API key
    openai = "LAB_OPENAI_KEY"

    [prices]                    # USD per million tokens; overrides / extends llm/prices.py
    "gpt-4o-mini" = { input = 0.15, output = 0.60 }

    [label]
    methods = ["highlight"]
    scorers = ["correlation", "detection"]
    concurrency = 8

A file that does not parse, or a field with a bad value or an unknown name, is a UserError naming the
file and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autointerp.errors import UserError
from autointerp.llm.prices import Price

FILE = "autointerp.toml"


# `label --simulator-mode`: "auto" and the names of simulate.SIMULATORS
SimulatorMode = Literal["auto", "exact", "exact-whole", "exact-raw", "exact-follow", "json", "head-exact"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Models(_Strict):
    explainer: str | None = None
    simulator: str | None = None  # also the judge of the detection and fuzzing scorers

    @field_validator("explainer", "simulator")
    @classmethod
    def _spec(cls, v: str | None) -> str | None:
        if v is not None:
            from autointerp.llm import parse_spec

            try:
                parse_spec(v)
            except UserError as e:
                raise ValueError(str(e).rstrip(".")) from None
        return v


class Keys(_Strict):
    openai: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    anthropic: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class LabelDefaults(_Strict):
    methods: list[str] | None = None
    scorers: list[str] | None = None
    concurrency: int | None = Field(None, ge=1)
    simulator_mode: SimulatorMode | None = None

    @field_validator("methods", "scorers")
    @classmethod
    def _known(cls, v: list[str] | None, info) -> list[str] | None:  # noqa: ANN001 - pydantic's info
        from autointerp.explain import EXPLAINERS
        from autointerp.score import SCORERS

        if v is not None:
            if not v:
                raise ValueError("name at least one")
            try:
                (EXPLAINERS if info.field_name == "methods" else SCORERS).check(v)
            except UserError as e:
                raise ValueError(str(e).rstrip(".")) from None
        return v


class Config(_Strict):
    models: Models = Field(default_factory=Models)
    keys: Keys = Field(default_factory=Keys)
    prices: dict[str, Price] = Field(default_factory=dict)
    label: LabelDefaults = Field(default_factory=LabelDefaults)
    source: str | None = Field(None, exclude=True)  # the file it came from (None: built-in defaults)

    def apply(self) -> None:
        """Make the prices and key variables the process's (the LLM backends read them)."""
        from autointerp.llm import configure_keys
        from autointerp.llm.prices import configure

        configure(self.prices)
        configure_keys(self.keys.model_dump(exclude_none=True))


def _where(path: Path | None, cwd: Path) -> tuple[Path, dict] | None:
    """The config file and its table, or None without one."""
    if path is not None:
        if not path.is_file():
            raise UserError(f"No config file at {path}; pass an existing autointerp.toml to --config.")
        return path, _read(path)
    if (cwd / FILE).is_file():
        return cwd / FILE, _read(cwd / FILE)
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        table = _read(pyproject).get("tool", {}).get("autointerp")
        if isinstance(table, dict):
            return pyproject, table
    return None


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML ({e}); fix the file.") from None


def load_config(path: Path | None = None, cwd: Path | None = None) -> Config:
    """The config in force (see the module doc); UserError naming the file and field when it is bad."""
    found = _where(path, cwd or Path.cwd())
    if found is None:
        return Config()
    file, table = found
    prefix = "[tool.autointerp] " if file.name == "pyproject.toml" else ""
    try:
        cfg = Config.model_validate(table)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        msg = first["msg"][:1].lower() + first["msg"][1:]
        got = f" (got {first['input']!r})" if first["type"] != "missing" else ""
        raise UserError(f"{file}: {prefix}{field}: {msg}{got}; fix the file.") from None
    cfg.source = str(file)
    return cfg
