"""Redaction: secrets and PII are removed from a request before anything is queued or stored.

Runs at ingress on the decoded request, so secrets never reach the queue, Kafka, disk or
logs. It covers every string and bytes field of the OTLP trace proto but the fixed-size
ids: attribute keys and values (resource, scope, span, event, link; inside arrays and
key-value lists too; bytes values read as UTF-8 where valid, else byte for byte), span
and event names, status messages, span and link ``trace_state``, scope name and version,
schema URLs and entity references. tests/test_redaction_fields.py plants a secret in
every such field, found by reflection over the proto, so a field added later is caught.

Three kinds of rule, all named, each with an action (see :mod:`.settings`):
- value patterns (the built-in pack in :mod:`.patterns`, plus your own regexes) find a
  secret inside any text;
- key rules redact an attribute's whole value because of its key (``*password*``);
- allow keys exempt an attribute's value from value patterns.

Cost matters: :class:`~.prefilter.Prefilter` scans the whole request once, and a request
no rule could match (the common case) skips the per-span walk entirely. When some rules
could match, only those are run on each string.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from processors.otlp_values import value_as_string
from processors.redaction.patterns import BUILTIN, SENSITIVE_KEYS, ValuePattern
from processors.redaction.prefilter import Candidate, Prefilter
from processors.redaction.settings import Action, KeyRule, RedactionSettings
from processors.wire import surveyed

_CACHE_LIMIT = 10_000  # distinct attribute keys remembered per lookup table


class RedactionResult(Counter[str]):
    """What one call redacted, by rule name (the values themselves are never recorded), and
    whether the request was walked at all."""

    def __init__(self, counts: Counter[str], scanned: bool):
        super().__init__(counts)
        self.scanned = scanned  # False when the prefilter let the request through untouched

    @property
    def counts(self) -> Counter[str]:
        return self


def hash_placeholder(salt: bytes, name: str, value: str, digits: int = 12) -> str:
    """``[HASH:<name>:<hex>]``: an HMAC-SHA256 of ``value``, so equal values still correlate
    and nobody without the salt can test guesses against it. Used by every ``hash`` action."""
    return f"[HASH:{name}:{hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:digits]}]"


def _glob_literal(glob: str) -> str | None:
    """The longest literal run of a glob, searched for in raw bytes (None: too short to help)."""
    longest = max(re.split(r"[*?\[\]]", glob), key=len)
    return re.escape(longest) if len(longest) >= 3 else None


def _globs(globs: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(fnmatch.translate(g) for g in globs), re.IGNORECASE) if globs else None


def _anchored(regex: str) -> bool:
    """Whether a user's pattern may use anchors (``^ $ \\A \\Z``). The prefilter searches the
    serialized request, where a value never starts or ends the buffer, so such a rule is
    always run instead: a prefilter must never make a rule weaker. (Conservative: ``[^x]``
    also counts; that rule is then merely not prefiltered.)"""
    return any(token in regex for token in ("^", "$", "\\A", "\\Z"))


class Redactor:
    """Replace secrets in an OTLP ``ExportTraceServiceRequest`` in place.

    Settings in ``__init__``, work in ``__call__`` (structlog's processor shape): a
    :class:`processors.contract.RequestProcessor`.
    """

    name = "redaction"
    mutates = True

    def __init__(self, settings: RedactionSettings | None = None, prefilter_backend: str | None = None):
        settings = settings or RedactionSettings()
        self._salt = settings.salt.get_secret_value().encode() if settings.salt else b""
        self._actions: dict[str, Action] = {}
        patterns: list[ValuePattern] = []
        for p in BUILTIN:
            choice = settings.builtin.get(p.name, "mask")
            if choice != "off":
                patterns.append(p)
                self._actions[p.name] = choice
        for own in settings.patterns:
            patterns.append(ValuePattern(own.name, own.regex, start_guard=""))
            self._actions[own.name] = own.action
        self._patterns = {p.name: p for p in patterns}
        self._names = [p.name for p in patterns]  # regex group r<i> is pattern i
        self._keeps = {p.name: re.compile(p.keep) for p in patterns if p.keep}
        key_rules = list(settings.keys)
        sensitive = settings.builtin.get("sensitive_key", "mask")
        if sensitive != "off":
            key_rules.insert(0, KeyRule(name="sensitive_key", match=list(SENSITIVE_KEYS), action=sensitive))
        self._key_rules = [(r.name, r.action, _globs(r.match), re.compile(r.regex, re.IGNORECASE) if r.regex else None)
                           for r in key_rules]  # fmt: skip
        for rule in key_rules:
            self._actions[rule.name] = rule.action
        self._allow = _globs(settings.allow_keys)
        own_names = {p.name for p in settings.patterns}
        candidates = [Candidate(p.name, None if p.name in own_names and _anchored(p.body) else p.search or p.body)
                      for p in patterns]  # fmt: skip
        for rule in key_rules:
            literals = [_glob_literal(g) for g in rule.match]
            searchable = rule.regex is None and all(literals)
            candidates.append(Candidate(rule.name, "|".join(map(str, literals)) if searchable else None, caseless=True))
        self._prefilter = Prefilter(candidates, prefilter_backend)
        self._key_names = frozenset(r.name for r in key_rules)
        self._texts: dict[frozenset[str], re.Pattern[str] | None] = {}
        self._key_cache: dict[str, tuple[str, Action] | None] = {}
        self._allow_cache: dict[str, bool] = {}

    @property
    def backend(self) -> str:
        return self._prefilter.backend

    def __call__(self, request: Any, raw: bytes | None = None) -> RedactionResult:
        """Redact an ``ExportTraceServiceRequest``. ``raw`` is the serialized request when the
        caller has it (saves a serialize)."""
        walk, result = self._start(request, raw)
        if walk is None:
            return result
        text = walk.text
        for rs in request.resource_spans:
            walk.resource(rs)
            for ss in rs.scope_spans:
                walk.scope(ss)
                for span in ss.spans:
                    span.name = text(span.name)
                    if span.trace_state:
                        span.trace_state = text(span.trace_state)
                    span.status.message = text(span.status.message)
                    walk.attrs(span.attributes)
                    for event in span.events:
                        event.name = text(event.name)
                        walk.attrs(event.attributes)
                    for link in span.links:
                        if link.trace_state:
                            link.trace_state = text(link.trace_state)
                        walk.attrs(link.attributes)
        return result

    def logs(self, request: Any, raw: bytes | None = None) -> RedactionResult:
        """Redact an ``ExportLogsServiceRequest``: the same rules, on every text a log
        record carries (body, attributes, severity text, event name) and its resource and
        scope. A body that is itself a secret of a ``drop`` rule is masked (it cannot go)."""
        walk, result = self._start(request, raw)
        if walk is None:
            return result
        text = walk.text
        for rl in request.resource_logs:
            walk.resource(rl)
            for sl in rl.scope_logs:
                walk.scope(sl)
                for record in sl.log_records:
                    walk.value(record.body)
                    walk.attrs(record.attributes)
                    if record.severity_text:
                        record.severity_text = text(record.severity_text)
                    if record.event_name:
                        record.event_name = text(record.event_name)
        return result

    def _start(self, request: Any, raw: bytes | None) -> tuple[_Walk | None, RedactionResult]:
        """The prefilter's verdict: no walk when no rule could match this request. A request
        the receiver surveyed is known by its text (every field a secret can be in, see
        :class:`processors.wire.WireRequest`), half the bytes of its body; else the body is scanned."""
        known = surveyed(request, raw)
        data = known.text if known is not None else raw if raw is not None else request.SerializeToString()
        active = self._prefilter(data)
        result = RedactionResult(Counter(), scanned=bool(active))
        if not active:
            return None, result
        return _Walk(self, self._text_pattern(active), bool(active & self._key_names), result), result

    def redact_text(self, text: str) -> str:
        """Redact one string with every value pattern (used outside OTLP, e.g. log lines)."""
        return _Walk(self, self._text_pattern(frozenset(self._patterns)), False, Counter()).text(text)

    def _text_pattern(self, active: frozenset[str]) -> re.Pattern[str] | None:
        """One alternation of the active value patterns, in pack order (cached per set)."""
        names = active - self._key_names
        if names not in self._texts:
            parts = [f"(?P<r{i}>{p.regex})" for i, p in enumerate(self._patterns.values()) if p.name in names]
            self._texts[names] = re.compile("|".join(parts)) if parts else None
        return self._texts[names]

    def key_rule(self, key: str) -> tuple[str, Action] | None:
        """The first key rule matching ``key`` (memoised: keys repeat on every span)."""
        if key not in self._key_cache:
            if len(self._key_cache) > _CACHE_LIMIT:
                self._key_cache.clear()
            self._key_cache[key] = next(
                ((name, action) for name, action, globs, rx in self._key_rules
                 if (globs is not None and globs.match(key)) or (rx is not None and rx.fullmatch(key))), None)  # fmt: skip
        return self._key_cache[key]

    def allowed(self, key: str) -> bool:
        if self._allow is None:
            return False
        if key not in self._allow_cache:
            if len(self._allow_cache) > _CACHE_LIMIT:
                self._allow_cache.clear()
            self._allow_cache[key] = bool(self._allow.match(key))
        return self._allow_cache[key]

    def placeholder(self, name: str, secret: str) -> str:
        action = self._actions[name]
        return hash_placeholder(self._salt, name, secret) if action == "hash" else f"[REDACTED:{name}]"

    def matched(self, m: re.Match[str]) -> tuple[str, str, bool] | None:
        """For one regex match: (text to put back, rule name, drop?) or None to leave it."""
        name = self._names[int(str(m.lastgroup)[1:])]
        text = m.group(0)
        keep = self._keeps.get(name)
        prefix_match = keep.match(text) if keep is not None else None
        prefix = text[: prefix_match.end()] if prefix_match else ""
        secret = text[len(prefix):]
        check = self._patterns[name].valid
        if check is not None and not check(secret):
            return None
        return prefix + self.placeholder(name, secret), name, self._actions[name] == "drop"


class _Walk:
    """One request's walk: applies the active rules and counts what it replaced."""

    def __init__(self, r: Redactor, pattern: re.Pattern[str] | None, keys: bool, counts: Counter[str]):
        self.r, self.pattern, self.keys, self.counts = r, pattern, keys, counts
        self.drop = False
        self._replace: Callable[[re.Match[str]], str] = self._sub

    def _sub(self, m: re.Match[str]) -> str:
        found = self.r.matched(m)
        if found is None:
            return m.group(0)
        text, name, drop = found
        self.counts[name] += 1
        self.drop = self.drop or drop
        return text

    def text(self, value: str) -> str:
        """Clean one string; a ``drop`` match is masked here (the caller may drop the whole value)."""
        if not value or self.pattern is None or not self.pattern.search(value):
            return value
        return self.pattern.sub(self._replace, value)

    def resource(self, group: Any) -> None:
        """A ``ResourceSpans``/``ResourceLogs``: schema URL, attributes, entity references."""
        text = self.text
        if group.schema_url:
            group.schema_url = text(group.schema_url)
        self.attrs(group.resource.attributes)
        for ref in group.resource.entity_refs:
            ref.schema_url, ref.type = text(ref.schema_url), text(ref.type)
            self.texts(ref.id_keys)
            self.texts(ref.description_keys)

    def scope(self, group: Any) -> None:
        """A ``ScopeSpans``/``ScopeLogs``: schema URL, scope name, version and attributes."""
        if group.schema_url:
            group.schema_url = self.text(group.schema_url)
        scope = group.scope
        scope.name, scope.version = self.text(scope.name), self.text(scope.version)
        self.attrs(scope.attributes)

    def value(self, value: Any) -> None:
        """A lone ``AnyValue`` (a log body): cleaned; a ``drop`` match is masked."""
        self._value(value)

    def texts(self, values: Any) -> None:
        """Clean a repeated string field in place."""
        for i, value in enumerate(values):
            new = self.text(value)
            if new != value:
                values[i] = new

    def attrs(self, attributes: Any) -> None:
        doomed = []
        for i, kv in enumerate(attributes):
            key = kv.key
            rule = self.r.key_rule(key) if self.keys else None
            self.drop = False
            new_key = self.text(key)  # a secret can be a key too
            if new_key != key:
                kv.key = new_key
                if self.drop:
                    doomed.append(i)
                    continue
            if rule is not None:
                name, action = rule
                self.counts[name] += 1
                if action == "drop":
                    doomed.append(i)
                else:
                    kv.value.string_value = self.r.placeholder(name, value_as_string(kv.value))
            elif not self.r.allowed(kv.key) and self._value(kv.value):
                doomed.append(i)
        for i in reversed(doomed):
            del attributes[i]

    def _value(self, value: Any) -> bool:
        """Clean an ``AnyValue``; True when it held a ``drop`` match and should go."""
        kind = value.WhichOneof("value")
        if kind == "string_value":
            self.drop = False
            new = self.text(value.string_value)
            if new != value.string_value:
                value.string_value = new
            return self.drop
        if kind == "bytes_value":
            # Bytes are read as UTF-8 where valid, else byte for byte (latin-1), so an ASCII
            # secret inside binary data is found too; placeholders are ASCII either way.
            raw = value.bytes_value
            try:
                text, encoding = raw.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = raw.decode("latin-1"), "latin-1"
            self.drop = False
            new = self.text(text)
            if new != text:
                value.bytes_value = new.encode(encoding)
            return self.drop
        if kind == "array_value":
            for item in value.array_value.values:
                self._value(item)  # a list item cannot be removed alone: masked
        elif kind == "kvlist_value":
            self.attrs(value.kvlist_value.values)
        return False
