"""Sampling rules: the YAML users write, validated, and compiled into predicates.

A rule is a list of conditions that must all hold, and a keep policy (a percentage or a
rate limit). The sampler evaluates rules in order and the first match decides, the way
Refinery's rules sampler and the OTel tail sampler's ``and`` policies read.

The models here are part of the public configuration contract: unknown keys are errors,
and every error message is written to be shown next to its key path.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from processors.units import parse_duration_ns, parse_rate, parse_ratio
from processors.otlp_values import find_attribute

Op = Literal["=", "!=", ">", ">=", "<", "<=", "exists", "not_exists", "matches", "in"]
SUBJECTS = ("status", "duration", "service", "span_name", "attribute")
_DURATION_EXPR = re.compile(r"^\s*(>=|<=|!=|=|>|<)?\s*(.+)$")


class SpanLike(Protocol):
    """The part of an OTLP span a rule reads (the protobuf ``Span`` satisfies it)."""

    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int

    @property
    def attributes(self) -> Any: ...
    @property
    def status(self) -> Any: ...


class TraceView(Protocol):
    """What the sampler shows a rule about one buffered trace."""

    has_error: bool
    duration_ns: int

    def root(self) -> tuple[str, Any, SpanLike] | None: ...
    def spans(self) -> Iterator[tuple[str, Any, SpanLike]]:
        """Yield ``(service_name, resource_attributes, span)`` for every span."""
        ...


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """One test on a trace. Exactly one subject key is set: status, duration, service,
    span_name or attribute."""

    status: Literal["error", "ok", "unset"] | None = None
    duration: str | None = None
    service: str | None = None
    span_name: str | None = None
    attribute: str | None = None
    op: Op | None = None
    value: Any = None
    scope: Literal["any", "root"] = "any"

    @model_validator(mode="after")
    def _one_subject(self) -> Condition:
        given = [s for s in SUBJECTS if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError(f"a condition needs exactly one of {', '.join(SUBJECTS)} (got {given or 'none'})")
        if self.duration is not None:
            parse_duration_expr(self.duration)  # raises on a malformed test
            if self.op is not None:
                raise ValueError("put the operator inside duration, e.g. duration: '>= 2s'")
        if self.op in ("exists", "not_exists") and self.value is not None:
            raise ValueError(f"op {self.op} takes no value")
        if self.attribute is not None and self.op not in (None, "exists", "not_exists") and self.value is None:
            raise ValueError(f"op {self.op} needs a value")
        if self.op == "in" and not isinstance(self._operand(), list):
            raise ValueError("op in needs a list value")
        if self.op == "matches":
            try:
                re.compile(str(self._operand()))
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        if self.status is not None and self.op not in (None, "=", "!="):
            raise ValueError("status takes op = or !=")
        return self

    def _operand(self) -> Any:
        """The value compared against: ``value`` for attributes, else the subject itself."""
        if self.attribute is not None:
            return self.value
        return self.service if self.service is not None else self.span_name


def parse_duration_expr(text: str) -> tuple[str, int]:
    m = _DURATION_EXPR.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration test such as '>= 2s'")
    return m.group(1) or ">=", parse_duration_ns(m.group(2))


class Rule(_Strict):
    """A named rule: all ``when`` conditions hold → keep with this probability, up to this
    rate, or about ``target`` traces per second spread over ``key`` (adaptive)."""

    name: str = Field(min_length=1)
    when: list[Condition] = Field(default_factory=list)
    keep: float | None = None
    rate_limit: float | None = None
    target: float | None = None
    """Adaptive (:mod:`processors.sampling.adaptive`): traces per second kept in all."""
    key: list[str] | None = None
    """What an adaptive rule spreads its target over: ``service`` and ``span_name`` of the
    root span, or attribute keys (the root span's, else its resource's). Default: both."""
    window: int | None = None
    """How far back an adaptive rule averages each key's traffic (default 30s)."""
    max_keys: int | None = Field(default=None, ge=1)
    """Keys an adaptive rule tracks; past it the new ones share one (default 1000)."""

    @field_validator("keep", mode="before")
    @classmethod
    def _keep(cls, value: object) -> float | None:
        return None if value is None else parse_ratio(value)

    @field_validator("rate_limit", "target", mode="before")
    @classmethod
    def _rate(cls, value: object) -> float | None:
        return None if value is None else parse_rate(value)

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: object) -> int | None:
        if value is None:
            return None
        ns = parse_duration_ns(value)
        if ns < 1_000_000_000:
            raise ValueError("must be at least 1s")
        return ns

    @field_validator("key")
    @classmethod
    def _key(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not k for k in value)):
            raise ValueError("list the fields to spread the target over, e.g. [service, span_name]")
        return value

    @model_validator(mode="after")
    def _one_policy(self) -> Rule:
        if sum(p is not None for p in (self.keep, self.rate_limit, self.target)) != 1:
            raise ValueError("a rule needs exactly one of keep, rate_limit or target")
        if self.target is None and (self.key, self.window, self.max_keys) != (None, None, None):
            raise ValueError("key, window and max_keys go with target (an adaptive rule)")
        return self

    @property
    def keys(self) -> list[str]:
        return self.key or ["service", "span_name"]


def validate_rule_list(rules: list[Rule]) -> list[Rule]:
    """Checks across rules: unique names, and an unconditional last rule so every
    trace gets a decision."""
    if not rules:
        raise ValueError("at least one rule is required; the last one must have no conditions")
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"rule name {rule.name!r} is used twice")
        seen.add(rule.name)
    if rules[-1].when:
        raise ValueError(f"the last rule ({rules[-1].name!r}) must have no conditions, so every trace is decided")
    return rules


# ----------------------------------------------------------------------------- evaluation

Predicate = Callable[[TraceView], bool]


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _compare(op: str, actual: Any, expected: Any) -> bool:
    """Compare numerically when both sides are numbers, else as strings."""
    if op == "in":
        return any(_compare("=", actual, item) for item in expected)
    if op == "matches":
        return re.search(str(expected), str(actual)) is not None
    a, b = _as_number(actual), _as_number(expected)
    if a is not None and b is not None:
        pair: tuple[Any, Any] = (a, b)
    elif op in ("=", "!="):
        pair = (_text(actual), _text(expected))
    else:
        return False
    x, y = pair
    return bool(_OPERATORS[op](x, y))


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _subjects(view: TraceView, scope: str) -> Iterable[tuple[str, Any, SpanLike]]:
    if scope == "root":
        root = view.root()
        return [root] if root is not None else []
    return view.spans()


def compile_condition(cond: Condition) -> Predicate:
    """Turn one condition into a function of a trace view."""
    scope = cond.scope
    if cond.duration is not None:
        op, limit = parse_duration_expr(cond.duration)
        if scope != "root":
            compare, bound = _OPERATORS[op], float(limit)  # what _compare does with two numbers
            return lambda view: bool(compare(float(view.duration_ns), bound))

        def duration(view: TraceView) -> bool:
            if scope == "root":
                root = view.root()
                if root is None:
                    return False
                span = root[2]
                return _compare(op, span.end_time_unix_nano - span.start_time_unix_nano, limit)
            return _compare(op, view.duration_ns, limit)

        return duration
    if cond.status is not None:
        code = {"unset": 0, "ok": 1, "error": 2}[cond.status]
        negate = cond.op == "!="
        if code == 2 and scope == "any" and not negate:
            return lambda view: view.has_error  # the common case needs no span walk
        return lambda view: any((s.status.code == code) != negate for _, _, s in _subjects(view, scope))
    if cond.attribute is not None:
        key, op, expected = cond.attribute, cond.op or ("=" if cond.value is not None else "exists"), cond.value

        def lookup(resource: Any, span: SpanLike) -> tuple[bool, Any]:
            found, value = find_attribute(span.attributes, key)
            return (found, value) if found else find_attribute(resource, key)

        if op == "exists":
            return lambda view: any(lookup(r, s)[0] for _, r, s in _subjects(view, scope))
        if op == "not_exists":
            return lambda view: not any(lookup(r, s)[0] for _, r, s in _subjects(view, scope))

        def attribute(view: TraceView) -> bool:
            for _, resource, span in _subjects(view, scope):
                found, value = lookup(resource, span)
                if found and _compare(op, value, expected):
                    return True
            return False

        return attribute
    op = cond.op or "="
    expected = cond._operand()
    if cond.service is not None:
        return lambda view: any(_compare(op, svc, expected) for svc, _, _ in _subjects(view, scope))
    return lambda view: any(_compare(op, s.name, expected) for _, _, s in _subjects(view, scope))


def native_conditions(rule: Rule) -> list[tuple[Any, ...]] | None:
    """A rule's conditions in the form the compiled buffer evaluates itself (``("error",)``,
    ``("duration", op, bound_ns)``: what the fast paths of :func:`compile_condition` test),
    or None when any of them, or the policy (a rate limit, a target), needs Python."""
    if rule.keep is None:
        return None
    out: list[tuple[Any, ...]] = []
    for cond in rule.when:
        if cond.scope != "any":
            return None
        if cond.duration is not None:
            op, limit = parse_duration_expr(cond.duration)
            out.append(("duration", op, float(limit)))
        elif cond.status == "error" and cond.op != "!=":
            out.append(("error",))
        else:
            return None
    return out


def compile_rule(rule: Rule) -> Predicate:
    """All conditions of a rule must hold; an empty rule always matches."""
    predicates = [compile_condition(c) for c in rule.when]
    if len(predicates) == 1:
        return predicates[0]  # the common case, without a generator per decision

    def every(view: TraceView) -> bool:
        for predicate in predicates:
            if not predicate(view):
                return False
        return True

    return every
