"""Synthetic units with a known ground truth: activation functions over the subject model's token strings.

A synthetic unit is a rule over the tokens of a window (a token set, a regex, a token after another,
a bigram, a position, an OR of rules, graded weights) plus its true explanation. It runs through the
same recorder (streaming top-k over the corpus), sampler, explainers, simulators and scorers as a real
unit, so a benchmark can check an explanation against the truth.

Unit ids: `MODEL/synthetic.NAME/0`, e.g. `gemma-3-270m/synthetic.months/0` (the hook field names the
unit, so every synthetic unit is its own source with one index).

A user's own units come from a file:
- a Python module (`.py`) with a function `units()` returning `SyntheticUnit`s (a `rule`, or `fn`: any
  callable from a window's token strings to one activation per token);
- a JSON or YAML spec: `{"units": [{"name": ..., "explanation": ..., "rule": {...}}]}` (or the bare list).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import re
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autointerp.errors import UserError

HOOK_PREFIX = "synthetic."
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def _norm(tok: str, case: bool) -> str:
    t = tok.strip()
    return t if case else t.lower()


class _TokenRule(BaseModel):
    """A rule that looks at one token at a time (its value is cached per token string)."""

    model_config = ConfigDict(frozen=True)

    def token_value(self, tok: str) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def acts(self, tokens: list[str]) -> list[float]:
        return [self.token_value(t) for t in tokens]


class TokensRule(_TokenRule):
    """Fires `value` on any token in `tokens` (surrounding space ignored; case-insensitive unless `case`)."""

    kind: Literal["tokens"] = "tokens"
    tokens: list[str]
    case: bool = False
    value: float = 1.0

    @cached_property
    def _set(self) -> frozenset[str]:
        return frozenset(_norm(t, self.case) for t in self.tokens)

    def token_value(self, tok: str) -> float:
        return self.value if _norm(tok, self.case) in self._set else 0.0


class RegexRule(_TokenRule):
    """Fires `value` on tokens that fully match `pattern` (leading/trailing space stripped first)."""

    kind: Literal["regex"] = "regex"
    pattern: str
    value: float = 1.0

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"bad regex {v!r}: {e}") from e
        return v

    @cached_property
    def _re(self) -> re.Pattern:
        return re.compile(self.pattern)

    def token_value(self, tok: str) -> float:
        return self.value if self._re.fullmatch(tok.strip()) else 0.0


class WeightsRule(_TokenRule):
    """Graded strength: each listed token fires with its own weight (case-insensitive unless `case`)."""

    kind: Literal["weights"] = "weights"
    weights: dict[str, float]
    case: bool = False

    @cached_property
    def _map(self) -> dict[str, float]:
        return {_norm(t, self.case): w for t, w in self.weights.items()}

    def token_value(self, tok: str) -> float:
        return self._map.get(_norm(tok, self.case), 0.0)


class PositionRule(BaseModel):
    """Fires `value` at window positions start..stop-1 (0 is the window's first token)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["position"] = "position"
    start: int = 0
    stop: int | None = None
    value: float = 1.0

    def acts(self, tokens: list[str]) -> list[float]:
        stop = len(tokens) if self.stop is None else self.stop
        return [self.value if self.start <= i < stop else 0.0 for i in range(len(tokens))]


class BigramRule(BaseModel):
    """Fires `value` on the token `second` right after the token `first` (e.g. ' York' after ' New')."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["bigram"] = "bigram"
    first: str
    second: str
    case: bool = False
    value: float = 1.0

    def acts(self, tokens: list[str]) -> list[float]:
        a, b = _norm(self.first, self.case), _norm(self.second, self.case)
        return [
            self.value if i > 0 and _norm(t, self.case) == b and _norm(tokens[i - 1], self.case) == a else 0.0
            for i, t in enumerate(tokens)
        ]


class AfterRule(BaseModel):
    """A token in a context: `target` fires only where `prev` matched within the `within` tokens before.

    `chain`: the context may also be earlier `target` tokens (digits of '$1,250' after the '$').
    """

    model_config = ConfigDict(frozen=True)
    kind: Literal["after"] = "after"
    target: Rule
    prev: Rule
    within: int = 1
    chain: bool = False

    def acts(self, tokens: list[str]) -> list[float]:
        tgt, prv = self.target.acts(tokens), self.prev.acts(tokens)
        out = [0.0] * len(tokens)
        for i in range(len(tokens)):
            if tgt[i] <= 0:
                continue
            back = range(max(0, i - self.within), i)
            if any(prv[j] > 0 or (self.chain and out[j] > 0) for j in back):
                out[i] = tgt[i]
        return out


class AnyRule(BaseModel):
    """Polysemantic: the maximum of several rules (an OR)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["any"] = "any"
    rules: list[Rule]

    def acts(self, tokens: list[str]) -> list[float]:
        cols = [r.acts(tokens) for r in self.rules]
        return [max(vals) for vals in zip(*cols, strict=True)] if cols else [0.0] * len(tokens)


Rule = Annotated[
    TokensRule | RegexRule | WeightsRule | PositionRule | BigramRule | AfterRule | AnyRule,
    Field(discriminator="kind"),
]
AfterRule.model_rebuild()
AnyRule.model_rebuild()


class SyntheticUnit(BaseModel):
    """A ground-truth unit: a name, its true explanation, and a `rule` or an `fn` over token strings."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    explanation: str
    rule: Rule | None = None
    fn: Callable[[list[str]], list[float]] | None = Field(default=None, exclude=True)
    near_miss: str = ""  # a plausible but wrong explanation: a distractor for the scorer meta-evaluation

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"unit name {v!r} may hold only letters, digits, '_' and '-'")
        return v

    def model_post_init(self, _context: object) -> None:
        if (self.rule is None) == (self.fn is None):
            raise ValueError(f"synthetic unit {self.name!r} needs exactly one of `rule` and `fn`")

    @property
    def hook(self) -> str:
        return HOOK_PREFIX + self.name

    def unit_id(self, model: str) -> str:
        return f"{model}/{self.hook}/0"

    def acts(self, tokens: list[str]) -> list[float]:
        """One activation per token of a window (>= 0; 0 is silent)."""
        out = self.rule.acts(tokens) if self.rule is not None else list(self.fn(tokens))  # type: ignore[misc]
        if len(out) != len(tokens):
            raise UserError(
                f"Synthetic unit {self.name!r} returned {len(out)} activations for {len(tokens)} tokens; "
                "return one per token."
            )
        return [float(a) for a in out]

    def definition(self) -> dict:
        """What decides the unit's activations (hashed into the recording's run id)."""
        if self.rule is not None:
            return {"name": self.name, "rule": self.rule.model_dump()}
        try:
            src = inspect.getsource(self.fn)  # type: ignore[arg-type]
        except (OSError, TypeError):
            src = getattr(self.fn, "__qualname__", repr(self.fn))
        return {"name": self.name, "fn": hashlib.sha1(src.encode()).hexdigest()}


def _tokens(*words: str) -> TokensRule:
    return TokensRule(tokens=list(words))


# Case-sensitive: folded to lower case, the rule fired mostly on the verbs "may" and "march", so the
# top examples of "names of months" were modal verbs and a simulator that read the explanation right
# scored low (the ground truth has to be what its explanation says).
MONTHS = TokensRule(
    case=True,
    tokens=[
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
)
DIGIT = RegexRule(pattern=r"\d+")

# The built-in suite, most distinct kinds first (a benchmark with --units N takes the first N).
BUILTIN: list[SyntheticUnit] = [
    SyntheticUnit(name="months", explanation="names of months", rule=MONTHS, near_miss="days of the week"),
    SyntheticUnit(
        name="def_keyword",
        explanation="the def keyword in Python code",
        rule=_tokens("def"),
        near_miss="the class keyword in Python code",
    ),
    SyntheticUnit(
        name="negation",
        explanation="negation words like not and no",
        rule=_tokens("not", "no", "never", "n't", "nor", "cannot"),
        near_miss="words expressing agreement",
    ),
    SyntheticUnit(
        name="digits_in_parens",
        explanation="digits right after an opening parenthesis",
        rule=AfterRule(target=DIGIT, prev=RegexRule(pattern=r".*\("), within=1, chain=True),
        near_miss="closing parentheses",
    ),
    SyntheticUnit(
        name="months_or_self",
        explanation="month names and the word self",
        rule=AnyRule(rules=[MONTHS, _tokens("self")]),
        near_miss="calendar dates",
    ),
    SyntheticUnit(
        name="nationality",
        explanation="nationality adjectives like American or French",
        rule=_tokens(
            "American",
            "British",
            "English",
            "French",
            "German",
            "Italian",
            "Spanish",
            "Russian",
            "Chinese",
            "Japanese",
            "Indian",
            "Canadian",
            "Australian",
            "Irish",
            "Scottish",
            "Dutch",
            "Swedish",
            "Polish",
            "Greek",
            "Mexican",
            "Brazilian",
            "Korean",
        ),
        near_miss="names of countries",
    ),
    SyntheticUnit(
        name="dot_after_self",
        explanation="the dot after self in Python code",
        rule=BigramRule(first="self", second="."),
        near_miss="the dot at the end of a sentence",
    ),
    SyntheticUnit(
        name="import",
        explanation="the import keyword in Python code",
        rule=_tokens("import"),
        near_miss="function definitions in Python code",
    ),
    SyntheticUnit(
        name="graded_digits",
        explanation="digits, stronger for larger digits",
        rule=WeightsRule(weights={str(d): (d + 1) / 10 for d in range(10)}),
        near_miss="letters of the alphabet",
    ),
    SyntheticUnit(
        name="family",
        explanation="family relations like father, son, wife",
        rule=_tokens(
            "father",
            "mother",
            "son",
            "daughter",
            "wife",
            "husband",
            "brother",
            "sister",
            "parents",
            "children",
            "married",
        ),
        near_miss="professions and jobs",
    ),
    SyntheticUnit(
        name="comparison",
        explanation="comparison operators in code",
        rule=RegexRule(pattern=r"==|!=|<=|>=|<|>"),
        near_miss="arithmetic operators in code",
    ),
    SyntheticUnit(
        name="capitalized",
        explanation="capitalized words",
        rule=RegexRule(pattern=r"[A-Z][a-z]+", value=0.5),
        near_miss="lowercase words",
    ),
]


class _Spec(BaseModel):
    units: list[SyntheticUnit]


def load_units(path: str | Path) -> list[SyntheticUnit]:
    """A user's ground-truth units from a Python module (`units()`), or a JSON / YAML rule spec."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No synthetic unit file at {path}; pass a .py, .json or .yaml file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".py":
            spec = importlib.util.spec_from_file_location(f"autointerp_user_units_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
            if not callable(getattr(module, "units", None)):
                raise UserError(
                    f"{path} defines no function units(); add one returning SyntheticUnit objects."
                )
            raw = list(module.units())
            units = [u if isinstance(u, SyntheticUnit) else SyntheticUnit(**u) for u in raw]
        elif suffix in (".json", ".yaml", ".yml"):
            text = path.read_text()
            if suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
            units = _Spec(units=data if isinstance(data, list) else data.get("units", [])).units
        else:
            raise UserError(f"{path} is neither a .py module nor a .json / .yaml spec of synthetic units.")
    except (ValidationError, ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} does not define valid synthetic units ({first}); fix the file.") from e
    if not units:
        raise UserError(f"{path} defines no synthetic units; add at least one.")
    names = [u.name for u in units]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{path} defines the synthetic unit {dup[0]!r} twice; give each a unique name.")
    return units


def synthetic_sources(token_strs: Callable[[list[int]], list[str]], units: list[SyntheticUnit]) -> list:
    """One recorder source per unit: token ids (B, T) -> its activations (B, T, 1), no model pass."""
    import torch

    from autointerp.subject.recorder import UnitSource

    def make(unit: SyntheticUnit) -> Callable[[torch.Tensor], torch.Tensor]:
        def from_tokens(toks: torch.Tensor) -> torch.Tensor:
            rows = [unit.acts(token_strs(row)) for row in toks.tolist()]
            return torch.tensor(rows, dtype=torch.float32).unsqueeze(-1)

        return from_tokens

    return [UnitSource(hook=u.hook, indices=[0], from_tokens=make(u)) for u in units]
