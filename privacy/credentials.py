"""Credentials: the common rules of gitleaks and trufflehog, as checked patterns.

Three families. Structure: private key blocks (PEM, OpenSSH, PGP; a block cut off
before its END line counts too), JWTs, credentials inside URLs and connection strings
(``postgresql://user:password@host``: the whole ``user:password``), ``Authorization:``
and bearer tokens. Assignments: ``password=``, ``api_key:``, ``client_secret =``,
``AccountKey=`` and their kin, quoted or not. Vendor formats with fixed prefixes: AWS,
GitHub, GitLab, Slack, Stripe, OpenAI, Anthropic, Google, Hugging Face, npm, PyPI,
SendGrid, Twilio, Mailgun, Shopify, DigitalOcean, Telegram and Discord. Every rule has a
cheap ``hint`` so ordinary text skips it. Earlier rules win overlapping matches.
"""

from __future__ import annotations

import re

from privacy.pattern import Pattern

_KEYWORDS = (r"api[_ -]?key|apikey|secret(?:[_ -]?key)?|client[_ -]?secret|access[_ -]?token"
             r"|auth[_ -]?token|refresh[_ -]?token|token|password|passwd|passphrase|pwd"
             r"|private[_ -]?key|account[_ -]?key|shared[_ -]?access[_ -]?key"
             r"|aws[_ -]?secret[_ -]?access[_ -]?key")

_VENDOR = re.compile(
    r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"                     # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|\bglpat-[A-Za-z0-9_-]{20,}"                                 # GitLab
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"                            # Slack tokens
    r"|https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}"      # Slack webhook
    r"|\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"                 # Stripe
    r"|\bsk-(?:proj-|ant-(?:api\d\d-)?|svcacct-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|\b(?:pk|rk)-(?:live-|test-)?[A-Za-z0-9_-]{16,}"
    r"|\bAIza[0-9A-Za-z_-]{35}\b|\bya29\.[0-9A-Za-z_-]{20,}"       # Google key, OAuth
    r"|\bhf_[A-Za-z0-9]{30,}\b"                                    # Hugging Face
    r"|\bnpm_[A-Za-z0-9]{36}\b|\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{40,}"  # npm, PyPI
    r"|\bSG\.[\w-]{16,}\.[\w-]{30,}"                               # SendGrid
    r"|\bSK[0-9a-fA-F]{32}\b|\bkey-[0-9a-zA-Z]{32}\b"              # Twilio, Mailgun
    r"|\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b|\bdo[opr]_v1_[a-f0-9]{64}\b"  # Shopify, DO
    r"|\b\d{8,10}:AA[0-9A-Za-z_-]{33}\b"                           # Telegram bot
    r"|discord(?:app)?\.com/api/webhooks/\d+/[\w-]{20,}")          # Discord webhook
_VENDOR_HINT = re.compile(
    r"AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat|glpat|xox|hooks\.slack|_live_|_test_|sk-"
    r"|[pr]k-|AIza|ya29|hf_|npm_|pypi-|SG\.|SK[0-9a-f]|key-|shp|_v1_|:AA|webhooks")

SECRET_PATTERNS: tuple[Pattern, ...] = (
    Pattern("SECRET", re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"(?:-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----|\Z)"), hint=re.compile("PRIVATE KEY")),
    Pattern("SECRET", re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}"),
            hint=re.compile("eyJ")),
    # scheme://user:password@host (the password may hold '@': the last one ends it)
    Pattern("SECRET", re.compile(
        r"\b[A-Za-z][A-Za-z0-9+.-]{1,30}://([^\s:/@]*:[^\s/]+)@[\w.-]+"), group=1,
        hint=re.compile("://")),
    Pattern("SECRET", re.compile(
        r"(?i)\bauthorization\b[\"']?\s*[:=]\s*[\"']?(?:basic|bearer|token|digest)\s+"
        r"([A-Za-z0-9._~+/=-]{8,})"), group=1, hint=re.compile(r"(?i)authorization")),
    Pattern("SECRET", re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)"), group=1,
            hint=re.compile(r"(?i)bearer")),
    Pattern("SECRET", _VENDOR, hint=_VENDOR_HINT),
    # keyword = "quoted value, spaces allowed" | keyword = bare value
    Pattern("SECRET", re.compile(
        r"(?i)(?<![a-z0-9])(?:" + _KEYWORDS + r")\b[\"']?\s*(?::=|=>|[:=])\s*([\"'])([^\"'\n]{4,}?)\1"),
        group=2, hint=re.compile(r"(?i)key|secret|token|pass|pwd")),
    Pattern("SECRET", re.compile(
        r"(?i)(?<![a-z0-9])(?:" + _KEYWORDS + r")\b[\"']?\s*(?::=|=>|[:=])\s*"
        r"(?![\"'])([^\s\"',;]{6,})"), group=1, hint=re.compile(r"(?i)key|secret|token|pass|pwd")),
)
