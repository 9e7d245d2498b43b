"""Redaction: every built-in rule is found wherever it hides, look-alikes are left alone,
and the YAML rules (key rules, allow keys, actions, own patterns) do what they say.

Every test runs with each prefilter backend (Hyperscan where it exists, and ``re``): the
prefilter must never make a secret slip through.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.config import ConfigError, load_config
from processors.redaction import BUILTIN_NAMES, RedactionSettings, Redactor, iban_valid, luhn_valid, ssn_valid
from processors.redaction.prefilter import BACKENDS

# (rule, text as it appears, the part that must disappear)
TRUE_POSITIVES = [
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7xQ9\n-----END RSA PRIVATE KEY-----",
     "MIIEowIBAAKCAQEA7xQ9"),
    ("private_key", '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0\\n-----END PRIVATE KEY-----\\n"}',
     "MIIEvQIBADANBgkqhkiG9w0"),
    ("jwt", "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2lnbmF0dXJl", "eyJzdWIiOiJ1c2VyLTQyIn0"),
    ("bearer_token", "Authorization: Bearer f9a8b7c6d5e4f3a2b1c0", "f9a8b7c6d5e4f3a2b1c0"),
    ("anthropic_api_key", "ANTHROPIC sk-ant-api03-Zx81mQ2vLr0aYbT7cNd4pEf6gH8jK0lM", "Zx81mQ2vLr0aYbT7cNd4pEf6gH8jK0lM"),
    ("openai_api_key", "key sk-proj-Zx81mQ2vLr0aYbT7cNd4pEf6", "Zx81mQ2vLr0aYbT7cNd4pEf6"),
    ("openai_api_key", "sk-aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9fG1hJ3", "aB3dE5fG7hJ9kL1mN3pQ5rS7"),
    ("llm_provider_key", "HF hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh", "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"),
    ("llm_provider_key", "gsk_" + "a1B2c3D4e5" * 5 + "f6", "a1B2c3D4e5a1B2c3D4e5"),
    ("aws_access_key", "aws AKIAZ7Q2M4N6P8R0T2V4 here", "AKIAZ7Q2M4N6P8R0T2V4"),
    ("gcp_key", "AIzaSyA1234567890abcdefghijklmnopqrstuv", "SyA1234567890abcdefghij"),
    ("gcp_key", "oauth ya29.a0AfH6SMBx3kQ_z9Yt7WvR2pLm", "a0AfH6SMBx3kQ_z9Yt7WvR2pLm"),
    ("github_token", "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8", "A1b2C3d4E5f6G7h8I9j0"),
    ("github_token", "github_pat_11ABCDEFG0123456789_abcdefghijkl", "11ABCDEFG0123456789_abcdefghijkl"),
    ("slack_token", "xoxb-1234567890-AbCdEfGhIjKl", "1234567890-AbCdEfGhIjKl"),
    ("slack_token", "POST https://hooks.slack.com/services/T0001/B0002/XyZ123abc", "T0001/B0002/XyZ123abc"),
    ("url_password", "dsn postgres://app:s3cr3t-pw@db.internal:5432/orders", "s3cr3t-pw"),
    ("password_assignment", "login failed for password=hunter22 retry", "hunter22"),
    ("password_assignment", '{"api_key": "abc123xyz789"}', "abc123xyz789"),
    ("email", "contact jane.doe+tag@mail.example.org now", "jane.doe+tag@mail.example.org"),
    ("iban", "pay to GB82 WEST 1234 5698 7654 32 today", "WEST 1234 5698 7654"),
    ("iban", "DE89370400440532013000", "DE89370400440532013000"),
    ("us_ssn", "ssn 078-05-1120 on file", "078-05-1120"),
    ("card_number", "card 4242 4242 4242 4242", "4242 4242 4242 4242"),
    ("card_number", "amex 378282246310005", "378282246310005"),
    ("phone_number", "call +1 415-555-0132", "415-555-0132"),
    ("phone_number", "office +44 20 7946 0958", "7946 0958"),
    ("phone_number", "cell (415) 555-0132", "555-0132"),
]  # fmt: skip

FALSE_POSITIVES = [
    "generate a private key with openssl genpkey",
    "eyJ alone", "header eyJhbGciOiJIUzI1NiJ9 only",
    "the bearer of bad news", "Bearer authentication required",
    "sk-short", "sk-learn-classification-pipeline-v2", "task-1234567890123",
    "hf_hub_download", "gsk_small",
    "AKIA-not-a-key", "AKIAZ7Q2M4N6P8R0T2V4X9Y8",
    "AIza short", "ya29.short",
    "ghp_short", "github_pat_x",
    "xoxb-short", "see hooks.slack.com for docs",
    "http://example.com:8080/path", "redis://cache:6379/0",
    "password reset requested", "passwords must match", "password:",
    "user@localhost", "@mention.here", "a@b",
    "GB82 WEST 1234 5698 7654 33", "AB12CDEF34567890",
    "000-12-3456", "666-12-3456", "123-00-4567", "2024-11-24",
    "order 4242424242424243", "ts 1795517313865095803",
    "v1.2.3", "+1 555", "192.168.1.10", "retry 3 of 5", "2024-11-24T10:00:00+01:00",
]  # fmt: skip


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def redactor(backend: str, **settings: Any) -> Redactor:
    return Redactor(RedactionSettings.model_validate(settings), prefilter_backend=backend)


def request_with(text: str) -> ExportTraceServiceRequest:
    """``text`` in every text field OTLP has: 10 places."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="owner").value.string_value = text
    ss = rs.scope_spans.add()
    ss.scope.attributes.add(key="s").value.string_value = text
    span = ss.spans.add(name=text, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    span.status.message = text
    span.attributes.add(key="plain").value.string_value = text
    span.attributes.add(key="list").value.array_value.values.add().string_value = text
    span.attributes.add(key="map").value.kvlist_value.values.add(key="inner").value.string_value = text
    event = span.events.add(name=text)
    event.attributes.add(key="e").value.string_value = text
    span.links.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8).attributes.add(key="l").value.string_value = text
    return req


def test_every_builtin_rule_has_true_positives() -> None:
    assert {rule for rule, _, _ in TRUE_POSITIVES} == set(BUILTIN_NAMES) - {"sensitive_key"}


@pytest.mark.parametrize(("rule", "text", "secret"), TRUE_POSITIVES)
def test_builtin_rules_redact_in_every_field(backend: str, rule: str, text: str, secret: str) -> None:
    req = request_with(text)
    result = redactor(backend)(req)
    assert result.scanned and result.counts[rule] == 10, result.counts
    body = req.SerializeToString()
    assert secret.encode() not in body
    assert body.count(f"[REDACTED:{rule}]".encode()) == 10


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_look_alikes_are_left_alone(backend: str, text: str) -> None:
    req = request_with(text)
    before = req.SerializeToString()
    redactor(backend)(req)
    assert req.SerializeToString() == before


def test_readable_prefixes_are_kept() -> None:
    r = Redactor()
    assert r.redact_text("Bearer f9a8b7c6d5e4f3a2b1c0") == "Bearer [REDACTED:bearer_token]"
    assert r.redact_text("postgres://app:pw1234@db/x") == "postgres://app:[REDACTED:url_password]@db/x"
    assert r.redact_text("PASSWORD = 'hunter22'") == "PASSWORD = '[REDACTED:password_assignment]'"


def test_a_secret_after_a_letter_shaped_length_byte_is_still_found(backend: str) -> None:
    # In protobuf the byte before a 65-byte string is 0x41 ("A"): a word guard in the
    # prefilter would wrongly see the key as the middle of a word.
    value = "sk-proj-Zx81mQ2vLr0aYbT7cNd4pEf6 " + "x" * 32
    assert len(value) == 65
    req = request_with(value)
    assert redactor(backend)(req).counts["openai_api_key"] == 10


def test_checksums() -> None:
    assert luhn_valid("4242424242424242") and not luhn_valid("4242424242424243")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")
    assert ssn_valid("078-05-1120") and not ssn_valid("900-12-3456")


def test_sensitive_keys_redact_whole_values_of_any_type(backend: str) -> None:
    req = request_with("nothing secret")
    attrs = req.resource_spans[0].scope_spans[0].spans[0].attributes
    attrs.add(key="db.password").value.string_value = "hunter2"
    attrs.add(key="http.request.header.authorization").value.string_value = "Basic dXNlcjpwYXNz"
    attrs.add(key="API_KEY").value.int_value = 123456
    attrs.add(key="gen_ai.usage.input_tokens").value.int_value = 812
    result = redactor(backend)(req)
    assert result.counts["sensitive_key"] == 3
    values = {kv.key: kv.value for kv in attrs}
    assert values["db.password"].string_value == "[REDACTED:sensitive_key]"
    assert values["API_KEY"].string_value == "[REDACTED:sensitive_key]"
    assert values["gen_ai.usage.input_tokens"].int_value == 812


def test_own_rules_actions_and_allow_keys(backend: str) -> None:
    r = redactor(backend, salt="pepper", builtin={"email": "hash", "phone_number": False, "us_ssn": "drop"},
                 patterns=[{"name": "ticket", "regex": r"TICKET-\d{6}"}],
                 keys=[{"match": ["x-internal-*"], "action": "drop"}, {"name": "tenant", "regex": r"^tenant\.(id|name)$"}],
                 allow_keys=["support.*"])  # fmt: skip
    req = request_with("see TICKET-123456 from ann@example.com at +1 415-555-0132")
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="X-Internal-Route").value.string_value = "blue"
    span.attributes.add(key="tenant.id").value.string_value = "acme"
    span.attributes.add(key="support.contact").value.string_value = "bob@example.com"
    span.attributes.add(key="ssn").value.string_value = "078-05-1120"
    result = r(req)
    assert result.counts == {"ticket": 10, "email": 10, "keys_0": 1, "tenant": 1, "us_ssn": 1}
    values = {kv.key: kv.value.string_value for kv in span.attributes}
    assert "X-Internal-Route" not in values and "ssn" not in values  # dropped
    assert values["tenant.id"] == "[REDACTED:tenant]"
    assert values["support.contact"] == "bob@example.com"  # allowed key
    assert "+1 415-555-0132" in values["plain"]  # phone_number is off
    assert "[REDACTED:ticket]" in span.name
    hashed = values["plain"].split()[3]
    assert hashed.startswith("[HASH:email:") and hashed in span.name  # equal values correlate
    other_salt = Redactor(RedactionSettings(salt="salt2", builtin={"email": "hash"}))  # type: ignore[arg-type]
    assert other_salt.redact_text("ann@example.com") not in (hashed, "ann@example.com")


def test_drop_removes_the_attribute_and_masks_what_cannot_be_removed(backend: str) -> None:
    req = request_with("mail ann@example.com")
    redactor(backend, builtin={"email": "drop"})(req)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    assert [kv.key for kv in span.attributes] == ["list", "map"]  # "plain" went; list items are masked
    assert span.name == "mail [REDACTED:email]"
    assert len(span.attributes[1].value.kvlist_value.values) == 0


def test_clean_requests_skip_the_walk(backend: str) -> None:
    req = request_with("GET /health 200 in 3ms")
    assert not redactor(backend)(req).scanned


@pytest.mark.parametrize(("redaction", "message"), [
    ({"patterns": [{"name": "x", "regex": "("}]}, "redaction.patterns[0].regex: invalid regular expression"),
    ({"builtin": {"emails": "mask"}}, "redaction.builtin: unknown built-in rule 'emails'"),
    ({"builtin": {"email": "hash"}}, "salt: required when a rule uses action hash"),
    ({"keys": [{"name": "k"}]}, "redaction.keys[0]: give match (globs) or regex"),
    ({"patterns": [{"name": "email", "regex": "x"}]}, "rule name 'email' is used twice"),
    ({"builtin": {"jwt": "encrypt"}}, "redaction.builtin.jwt"),
])  # fmt: skip
def test_bad_redaction_config_names_the_key(redaction: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"redaction": redaction})
    assert message in str(err.value)


def test_anchored_own_patterns_redact(backend: str) -> None:
    """A pattern anchored to the whole value (``^...$``) cannot match inside the serialized
    request the prefilter searches; the prefilter must not make it a rule that never fires."""
    r = redactor(backend, patterns=[{"name": "ticket", "regex": r"^TICKET-\d{6}$"},
                                    {"name": "tail", "regex": r"secret-\w+\Z"}])  # fmt: skip
    req = request_with("TICKET-123456")
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="note").value.string_value = "see TICKET-123456 later"  # not the whole value
    span.attributes.add(key="end").value.string_value = "ends with secret-abc"
    result = r(req, req.SerializeToString())
    assert result.counts["ticket"] == 10 and result.counts["tail"] == 1
    values = {kv.key: kv.value.string_value for kv in span.attributes}
    assert values["plain"] == "[REDACTED:ticket]" and span.name == "[REDACTED:ticket]"
    assert values["note"] == "see TICKET-123456 later"
    assert "secret-abc" not in values["end"]


def test_a_patterns_search_form_matches_exactly_where_its_body_does() -> None:
    """The prefilter searches for ``search`` instead of ``body`` where a pattern has one:
    a cheaper regex that finds something in a text exactly when the body does, so the
    prefilter never misses a secret it would have seen. Checked on the true and false
    positives here, on each cut short or run on, and on random texts of the characters
    these patterns read."""
    import random
    import re

    from processors.redaction.patterns import BUILTIN

    rng = random.Random(7)
    texts = [text for _, text, *_ in TRUE_POSITIVES] + [str(text) for text in FALSE_POSITIVES]
    texts += [t[:cut] for t in list(texts) for cut in range(len(t))]
    texts += [t + tail for t in texts[:200] for tail in ("0", "a", ".", "-1", "ab")]
    alphabet = "0123456789 -.@_+%abcXYZ"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(20_000)]
    searched = [p for p in BUILTIN if p.search]
    assert {p.name for p in searched} == {"email", "card_number"}
    for p in searched:
        body, search = re.compile(p.body), re.compile(p.search or "")
        for text in texts:
            assert bool(body.search(text)) == bool(search.search(text)), (p.name, text)
