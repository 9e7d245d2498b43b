"""``redaction:`` in the YAML. Validated at load time, so a bad regex is a config error
that names its key (``redaction.patterns[0].regex: ...``), never a crash at ingest."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from processors.redaction.patterns import BUILTIN_NAMES

Action = Literal["mask", "hash", "drop"]
"""``mask``: a typed placeholder ``[REDACTED:<rule>]``. ``hash``: ``[HASH:<rule>:<12 hex>]``, a
salted HMAC, so equal values still correlate across spans. ``drop``: remove the attribute
(a match in a span name, status message, event name or list item is masked instead)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class PatternRule(_Strict):
    """A value pattern of your own, searched for in every text field."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    regex: str
    action: Action = "mask"

    _regex = field_validator("regex")(classmethod(lambda cls, v: _check_regex(v)))


class KeyRule(_Strict):
    """Attributes whose key matches have their whole value redacted, whatever it looks like."""

    name: str = Field(default="", pattern=r"^([a-z][a-z0-9_]{0,62})?$")
    """Shown in placeholders and counters; default ``keys_<index>``."""
    match: list[str] = Field(default_factory=list)
    """Globs on the attribute key (``*password*``), case-insensitive."""
    regex: str | None = None
    """A regular expression the whole key must match (case-insensitive). Globs are cheaper:
    their literal part is searched in the request bytes first, a regex makes every request
    with attributes walk its spans."""
    action: Action = "mask"

    @model_validator(mode="after")
    def _one_matcher(self) -> KeyRule:
        if not self.match and self.regex is None:
            raise ValueError("give match (globs) or regex")
        if self.regex is not None:
            _check_regex(self.regex)
        return self


class RedactionSettings(_Strict):
    enabled: bool = True
    builtin: dict[str, Action | Literal["off"]] = Field(default_factory=dict)
    """Per built-in rule, another action or ``off``; unlisted ones mask."""
    patterns: list[PatternRule] = Field(default_factory=list)
    keys: list[KeyRule] = Field(default_factory=list)
    allow_keys: list[str] = Field(default_factory=list)
    """Globs on attribute keys whose values value patterns leave alone (key rules still apply)."""
    salt: SecretStr | None = None
    """Secret for ``hash``; required when any rule hashes. Keep it stable, or hashes stop
    correlating across restarts and replicas (``TAILSIFT_REDACTION__SALT``)."""

    @field_validator("builtin", mode="before")
    @classmethod
    def _builtin(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(BUILTIN_NAMES))
        if unknown:
            raise ValueError(f"unknown built-in rule {unknown[0]!r}; known: {', '.join(BUILTIN_NAMES)}")
        # YAML 1.1 reads a bare ``off`` as false.
        return {k: "off" if v is False else v for k, v in value.items()}

    @model_validator(mode="after")
    def _names_and_salt(self) -> RedactionSettings:
        for i, rule in enumerate(self.keys):
            rule.name = rule.name or f"keys_{i}"
        names = [r.name for r in self.patterns] + [r.name for r in self.keys]
        for name in names:
            if name in BUILTIN_NAMES or names.count(name) > 1:
                raise ValueError(f"rule name {name!r} is used twice (built-in names: {', '.join(BUILTIN_NAMES)})")
        actions = [*self.builtin.values(), *(r.action for r in self.patterns), *(r.action for r in self.keys)]
        hashing = "hash" in actions
        if hashing and (self.salt is None or not self.salt.get_secret_value()):
            raise ValueError("salt: required when a rule uses action hash (set TAILSIFT_REDACTION__SALT)")
        return self
