"""Redaction of secrets and PII at ingress: see :mod:`.redactor`, the pack in :mod:`.patterns`."""

from processors.redaction.patterns import BUILTIN, BUILTIN_NAMES, iban_valid, luhn_valid, ssn_valid
from processors.redaction.redactor import RedactionResult, Redactor
from processors.redaction.settings import RedactionSettings

__all__ = ["BUILTIN", "BUILTIN_NAMES", "RedactionResult", "RedactionSettings", "Redactor", "iban_valid",
           "luhn_valid", "ssn_valid"]  # fmt: skip
