"""Bearer-token authentication for every server, and the tenant each token stands for.

Once ``auth`` is set on a server, a request without ``Authorization: Bearer <token>``, or
with a token that is not configured, is refused: 401 on HTTP, UNAUTHENTICATED on gRPC.
The OTel SDKs send the header with no code change::

    OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20<token>"

Tokens come from the YAML (``bearer_tokens``), a file (``bearer_tokens_file``, one token
per line, optionally followed by its tenant) or the environment
(``TAILSIFT_RECEIVERS__OTLP__HTTP__AUTH__BEARER_TOKENS='[{"token": "...", "tenant": "a"}]'``).
They are ``SecretStr``: printing the settings shows ``**********``. Each presented token is
hashed and compared with every configured hash with ``hmac.compare_digest`` and no early
exit, so the time taken does not tell how much of a token was right, nor which one.

A token may carry a tenant. Exports with it get the resource attribute
``tailsift.tenant`` (whatever the client sent there is replaced, so a team cannot write
as another); queries with it see only that tenant's spans. A token without a tenant is
an operator's: its exports carry no tenant and its queries see everything.

Thread safety: an ``Authenticator`` is immutable after ``__init__``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from processors.units import StrictModel

TENANT_KEY = "tailsift.tenant"
_TENANT = r"^[A-Za-z0-9._-]{1,64}$"


class BearerToken(StrictModel):
    token: SecretStr
    tenant: str | None = Field(default=None, pattern=_TENANT)

    @field_validator("token")
    @classmethod
    def _usable(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if len(text) < 16 or not text.isascii() or any(c.isspace() for c in text):
            raise ValueError("a token must be at least 16 characters, ASCII, without spaces")
        return value


class AuthSettings(StrictModel):
    bearer_tokens: list[BearerToken] = Field(default_factory=list)
    """Each entry is a token, or ``{token: ..., tenant: team-a}``."""
    bearer_tokens_file: str | None = None
    """A file with one token per line, optionally followed by a space and its tenant."""

    @field_validator("bearer_tokens", mode="before")
    @classmethod
    def _plain_strings(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"token": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _some_token(self) -> AuthSettings:
        if not self.tokens():
            raise ValueError("bearer_tokens: at least one token is needed (or bearer_tokens_file)")
        return self

    def tokens(self) -> list[BearerToken]:
        """Configured tokens and those of ``bearer_tokens_file``. Errors say the line, never the token."""
        out = list(self.bearer_tokens)
        if self.bearer_tokens_file:
            try:
                lines = Path(self.bearer_tokens_file).read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"bearer_tokens_file: cannot read {self.bearer_tokens_file}: {exc.strerror}") from None
            for number, line in enumerate(lines, 1):
                parts = line.split()
                if not parts or parts[0].startswith("#"):
                    continue
                if len(parts) > 2:
                    raise ValueError(f"bearer_tokens_file: line {number}: expected a token and optionally a tenant")
                try:
                    out.append(BearerToken(token=SecretStr(parts[0]), tenant=parts[1] if len(parts) == 2 else None))
                except ValueError:
                    raise ValueError(f"bearer_tokens_file: line {number}: a token must be at least 16 characters, "
                                     "and a tenant letters, digits, '.', '_' or '-'") from None  # fmt: skip
        return out


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token belongs to. ``tenant`` None: an operator's token (no tenant)."""

    tenant: str | None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """``check(authorization_header) -> Identity | None``. Immutable after ``__init__``."""

    def __init__(self, settings: AuthSettings):
        self._tokens = [(_digest(t.token.get_secret_value()), Identity(t.tenant)) for t in settings.tokens()]

    def check(self, authorization: str | None) -> Identity | None:
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = _digest(token.strip())
        found: Identity | None = None
        for digest, identity in self._tokens:  # every one is compared: no early exit
            if hmac.compare_digest(presented, digest):
                found = identity
        return found


UNAUTHENTICATED = "missing or invalid bearer token (Authorization: Bearer <token>)"
"""The one message a refused request gets: it never repeats what was sent."""
