"""Credentials found the way gitleaks' and trufflehog's common rules find them, on
real-looking (made-up) samples; ordinary text about passwords and tokens is left alone."""

from __future__ import annotations

import pytest

from privacy.detectors import PatternDetector, Texts

FOUND = [
    ("DATABASE_URL=postgresql://app_user:Xy7#pq9!mZ@db.internal:5432/orders",
     "app_user:Xy7#pq9!mZ"),
    ("conn = 'mysql://root:p@ssw0rd@10.0.3.7/shop'", "root:p@ssw0rd"),
    ("mongodb+srv://svc:Zt9kQ2vN8wLr@cluster0.abcde.mongodb.net/?retryWrites=true",
     "svc:Zt9kQ2vN8wLr"),
    ("redis://:s3cr3tRedisPw@cache:6379/0", ":s3cr3tRedisPw"),
    ("Server=tcp:prod.database.windows.net;Database=crm;User ID=admin;Password=Tr0ub4dor&3;",
     "Tr0ub4dor&3"),
    ("DefaultEndpointsProtocol=https;AccountName=acme;AccountKey="
     "q8Zx1VbN3mK5pL7rT9wY2aC4eG6iJ8kM0oQ2sU4wX6zA8cE0gI2kM4oQ6sU8wY0aC2eG4iK6mO8qS==;",
     "q8Zx1VbN3mK5pL7rT9wY2aC4eG6iJ8kM0oQ2sU4wX6zA8cE0gI2kM4oQ6sU8wY0aC2eG4iK6mO8qS=="),
    ('password = "correct horse battery staple"', "correct horse battery staple"),
    ("export DB_PASSWORD='Hunter2!Hunter2'", "Hunter2!Hunter2"),
    ('client_secret: "9f8e7d6c5b4a39281706f5e4d3c2b1a0"', "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("curl -H 'Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l' https://api.acme.io",
     "YWxhZGRpbjpvcGVuc2VzYW1l"),
    ("use bearer 4f9c2a7e81b34d56a0e9c3b7f1d2e8a6 for the call",
     "4f9c2a7e81b34d56a0e9c3b7f1d2e8a6"),
    ("aws_access_key_id = AKIAQYLPMN5HFIQR7XYZ", "AKIAQYLPMN5HFIQR7XYZ"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"),
    ("token ghp_R4nd0mAbCdEfGhIjKlMnOpQrStUvWxYz0123", "ghp_R4nd0mAbCdEfGhIjKlMnOpQrStUvWxYz0123"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP",
     "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP"),
    ("GITLAB_TOKEN glpat-xY7zW3vU9tS1rQ5pO2nM", "glpat-xY7zW3vU9tS1rQ5pO2nM"),
    ("slack: xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
     "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("hook https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
     "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"),
    ("stripe.api_key = sk_live_51H8xYzAbCdEfGhIjKlMnOpQr", "sk_live_51H8xYzAbCdEfGhIjKlMnOpQr"),
    ("OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"),
    ("key sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe", "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"),
    ("maps key AIzaSyD4x9Qw2Er5Ty8Ui1Op3As6Df9Gh2Jk5Lm", "AIzaSyD4x9Qw2Er5Ty8Ui1Op3As6Df9Gh2Jk5Lm"),
    ("HF_TOKEN hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"),
    ("//registry.npmjs.org/:_authToken=npm_aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6",
     "npm_aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"),
    ("SG.aBcDeFgHiJkLmNoPqRsTuV.wXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01234",
     "SG.aBcDeFgHiJkLmNoPqRsTuV.wXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01234"),
    ("shopify shpat_0123456789abcdef0123456789abcdef", "shpat_0123456789abcdef0123456789abcdef"),
    ("bot 123456789:AAHfiqksKZ8WmR2zSjiQ7_v4TMAKdiHm9T0", "123456789:AAHfiqksKZ8WmR2zSjiQ7_v4TMAKdiHm9T0"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
     "-----END OPENSSH PRIVATE KEY-----", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"),
    ("here is my key -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq9 (rest cut off)",
     "MIIEpAIBAAKCAQEA7bq9"),
]

LEFT_ALONE = [
    "Our password policy requires twelve characters.",
    "Reset your password at https://example.com/account/reset",
    "The token limit of the model is 4096.",
    "def get_token(self):\n    return self._token",
    "Visit https://docs.python.org/3/library/secrets.html for details.",
    "The API key is stored in the environment, never in the code.",
    "sk-learn is not a key",
]


def _secrets(text: str) -> list[str]:
    return [s.text for s in PatternDetector().detect(Texts([], [text])) if s.kind == "SECRET"]


@pytest.mark.parametrize("text, secret", FOUND)
def test_credentials_are_found(text, secret):
    found = _secrets(text)
    assert any(secret in s for s in found), (text, found)


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_ordinary_text_is_left_alone(text):
    assert _secrets(text) == []


@pytest.mark.parametrize("text, ip", [
    ("The server is at 10.20.30.40.", "10.20.30.40"),
    ("Connect to 192.168.1.10, then log in.", "192.168.1.10"),
    ("ssh admin@172.16.5.4", "172.16.5.4"),
    ("hosts: 8.8.8.8 and 2001:db8::1.", "8.8.8.8"),
])
def test_ip_addresses_at_the_end_of_a_sentence_are_found(text, ip):
    spans = PatternDetector().detect(Texts([], [text]))
    assert any(ip in s.text for s in spans), spans
