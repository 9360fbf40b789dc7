"""OAuth2 client-credentials tokens: JWT-shaped (HS256), with ``exp``/``iat``/``azp``/``iss``.

Tokens carry a generation number; "revoking" bumps the generation so every token issued before is rejected,
which lets tests provoke a 401 in the middle of a long wait.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from typing import Any

TOKEN_PATHS = (
    "/oauth/token",
    "/auth/realms/main/protocol/openid-connect/token",
    "/auth/realms/CDSE/protocol/openid-connect/token",
)

INVALID_CLIENT = {
    "error": "invalid_client",
    "error_description": "Invalid client or Invalid client credentials",
}


def token_realm(issuer: str) -> str:
    """The realm of a token's ``iss`` ("main", "CDSE"); the legacy ``/oauth/token`` issues "main" tokens."""
    return issuer.split("/auth/realms/", 1)[1].split("/", 1)[0] if "/auth/realms/" in issuer else "main"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Issues and checks tokens for the one configured client."""

    def __init__(self, client_id: str, client_secret: str, seed: int) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        # Stable across restarts with the same config, so a --state-file restart keeps clients logged in.
        self._key = hashlib.sha256(f"{seed}:{client_id}:{client_secret}:emulator".encode()).digest()
        self.generation = 0
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, int, str]] = {}

    def credentials_ok(self, client_id: str | None, client_secret: str | None) -> bool:
        """True if the pair is the configured client's (compared in constant time)."""
        return (
            client_id is not None
            and client_secret is not None
            and hmac.compare_digest(client_id.encode(), self.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
        )

    def issue(self, issuer: str, lifetime: float) -> dict[str, Any]:
        """The token response body (Keycloak's shape, which both SH and CDSE return)."""
        now = time.time()
        claims = {
            "exp": int(now + lifetime),
            "iat": int(now),
            "jti": secrets.token_hex(8),
            "iss": issuer,
            "aud": "account",
            "sub": self.client_id,
            "typ": "Bearer",
            "azp": self.client_id,
            "clientId": self.client_id,
            "gen": self.generation,
            # Sub-second expiry for tests with tiny lifetimes; ``exp`` stays an integer as in real JWTs.
            "exp_ms": int((now + lifetime) * 1000),
        }
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "emulator"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        lifetime_out: float | int = int(lifetime) if float(lifetime).is_integer() else lifetime
        return {
            "access_token": f"{header}.{payload}.{signature}",
            "expires_in": lifetime_out,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": "email profile",
        }

    def check(self, authorization: str | None, realm: str | None = None) -> str | None:
        """``None`` if the header holds a valid, unexpired, unrevoked token; else why not.

        With ``realm`` ("main" = Sentinel Hub, "CDSE"), tokens issued by another realm's endpoint are refused,
        as the real deployments do (``/oauth/token`` is the Sentinel Hub "main" realm).
        """
        if not authorization:
            return "missing Authorization header"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "Authorization header is not a Bearer token"
        token = token.strip()
        now_ms = time.time() * 1000
        cached = self._cache.get(token)
        if cached is None:
            claims = self._decode(token)
            if claims is None:
                return "invalid token"
            cached = (
                float(claims.get("exp_ms", claims.get("exp", 0) * 1000)),
                int(claims.get("gen", -1)),
                token_realm(str(claims.get("iss", ""))),
            )
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[token] = cached
        exp_ms, gen, issuer_realm = cached
        if gen != self.generation:
            return "token revoked"
        if now_ms >= exp_ms:
            return "token expired"
        if realm is not None and issuer_realm != realm:
            return f"token issued by realm {issuer_realm!r}, this deployment accepts realm {realm!r}"
        return None

    def _decode(self, token: str) -> dict[str, Any] | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        expected = _b64(hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, parts[2]):
            return None
        try:
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, binascii.Error):
            return None
        return claims if isinstance(claims, dict) else None

    def revoke_all(self) -> None:
        """Reject every token issued so far (the next API call with one gets 401); new tokens work."""
        with self._lock:
            self.generation += 1
            self._cache.clear()
