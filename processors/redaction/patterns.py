"""The built-in redaction pack: what a platform team expects removed before anything is kept.

Each value pattern has a ``body`` (what the secret looks like) and optional word guards
around it. The guards keep a match from starting or ending inside a longer word or number
(``task-1234…`` is not a key). They apply to decoded strings only: in raw protobuf bytes
the byte before a string is its length, which may well be a letter, so the request
prefilter searches for the bare body. Validators (Luhn, IBAN mod-97, SSN ranges) reject
look-alikes that have the right shape but not the right checksum.

``keep`` is a prefix of the match that stays readable: ``Bearer [REDACTED:bearer_token]``,
``postgres://app:[REDACTED:url_password]@db``, ``password=[REDACTED:password_assignment]``.

Every pattern has true- and false-positive tests in ``tests/test_redaction.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

WORD_START = r"(?<![A-Za-z0-9])"
WORD_END = r"(?![A-Za-z0-9])"
DIGITS_END = r"(?!\d)"


@dataclass(frozen=True)
class ValuePattern:
    """A named secret shape, found inside any text field."""

    name: str
    body: str
    start_guard: str = WORD_START
    end_guard: str = ""
    keep: str | None = None
    """A regex matched at the start of the match: that part is left in the clear."""
    valid: Callable[[str], bool] | None = None
    """A checksum the match must pass (applied to the part after ``keep``)."""
    search: str | None = None
    """What the request prefilter searches for instead of ``body``: a regex that matches
    somewhere exactly when ``body`` does, and scans faster (``body``'s open-ended repeats cut
    to their least: a longer match contains a shorter one)."""

    @property
    def regex(self) -> str:
        return f"{self.start_guard}(?:{self.body}){self.end_guard}"


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum card numbers carry; it keeps order ids and timestamps intact."""
    digits = re.sub(r"[ -]", "", digits)
    total, double = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: move the country and check digits to the end; the number mod 97 is 1."""
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    digits = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(digits) % 97 == 1


def ssn_valid(text: str) -> bool:
    """US SSNs never have area 000, 666 or 9xx, group 00 or serial 0000."""
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def phone_valid(text: str) -> bool:
    """E.164 allows at most 15 digits; fewer than 8 is a short code or a count, not a phone."""
    return 8 <= sum(c.isdigit() for c in text) <= 15


_ASSIGNED = r"password|passwd|passphrase|secret|client[_-]?secret|api[_-]?key|access[_-]?token|auth[_-]?token"

BUILTIN: tuple[ValuePattern, ...] = (
    ValuePattern("private_key",
                 r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?:[\s\S]*?-----END[A-Z ]*PRIVATE KEY-----|[A-Za-z0-9+/=\s\\]*)",
                 start_guard=""),
    ValuePattern("jwt", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    ValuePattern("bearer_token", r"[Bb]earer[ \t]+(?=[A-Za-z0-9._~+/-]*\d)[A-Za-z0-9._~+/-]{16,}=*",
                 keep=r"[Bb]earer[ \t]+"),
    ValuePattern("anthropic_api_key", r"sk-ant-[a-z]+\d\d-[A-Za-z0-9_-]{20,}"),
    # Legacy and project keys: 20+ characters mixing upper case, lower case and digits, which
    # words and slugs such as ``sk-learn-classification-pipeline`` do not.
    ValuePattern("openai_api_key",
                 r"sk-(?:proj-|svcacct-|admin-)?(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])"
                 r"(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}"),
    ValuePattern("llm_provider_key",  # Hugging Face, Groq, xAI, Replicate, Perplexity
                 r"hf_[A-Za-z]{30,}|gsk_[A-Za-z0-9]{48,}|xai-[A-Za-z0-9]{70,}|r8_[A-Za-z0-9]{37}|pplx-[A-Za-z0-9]{40,}",
                 end_guard=WORD_END),
    ValuePattern("aws_access_key", r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}", end_guard=WORD_END),
    ValuePattern("gcp_key", r"AIza[0-9A-Za-z_-]{35}|ya29\.[0-9A-Za-z_-]{20,}"),
    ValuePattern("github_token", r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"),
    ValuePattern("slack_token", r"xox[abposre]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+"),
    ValuePattern("url_password", r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]+:[^\s/@]+(?=@)",
                 keep=r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]+:"),
    ValuePattern("password_assignment", rf"(?i:{_ASSIGNED})[\"']?[ \t]*[:=][ \t]*[\"']?[^\s\"'&,;]{{3,}}",
                 keep=rf"(?i:{_ASSIGNED})[\"']?[ \t]*[:=][ \t]*[\"']?"),
    ValuePattern("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
                 search=r"[A-Za-z0-9._%+-]@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2}"),
    ValuePattern("iban", r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?", end_guard=WORD_END,
                 valid=iban_valid),
    ValuePattern("us_ssn", r"\d{3}-\d{2}-\d{4}", end_guard=DIGITS_END, valid=ssn_valid),
    ValuePattern("card_number", r"[2-6]\d(?:[ -]?\d){11,17}", end_guard=DIGITS_END, valid=luhn_valid,
                 search=r"[2-6]\d(?:[ -]?\d){11}"),
    ValuePattern("phone_number",
                 r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}"
                 r"|\(\d{3}\) ?\d{3}[-.]\d{4}|\d{3}[-.]\d{3}[-.]\d{4}",
                 start_guard=r"(?<![A-Za-z0-9+])", end_guard=DIGITS_END, valid=phone_valid),
)  # fmt: skip
"""Order matters where shapes overlap: the first alternative that matches at a position wins."""

SENSITIVE_KEYS: tuple[str, ...] = (
    "*password*", "*passwd*", "*secret*", "*api_key*", "*apikey*", "*api-key*", "*private_key*",
    "*access_token*", "*refresh_token*", "*auth_token*", "*session_token*",
    "authorization", "*.authorization", "cookie", "*.cookie", "set-cookie", "*.set-cookie", "*.set_cookie",
)  # fmt: skip
"""Attribute keys whose whole value is a secret (built-in key rule ``sensitive_key``), e.g.
``http.request.header.authorization``. Globs, case-insensitive."""

BUILTIN_NAMES: tuple[str, ...] = tuple(p.name for p in BUILTIN) + ("sensitive_key",)
