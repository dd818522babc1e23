"""A real OAuth issuer on a loopback port, for the token tests.

It serves what a proxy reads of an identity provider: the OpenID discovery
document (or only RFC 8414 metadata), a JWKS, and an RFC 7662 introspection
endpoint. Keys are minted here with ``cryptography``; tokens are signed with
PyJWT. The test can rotate and remove keys, take the issuer down (every
request answered 503) and count what the proxy asked for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .ports import LOOPBACK

INTROSPECTION_CLIENT = ("pop3proxy", "introspection-secret")


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK, via PyJWT's own encoders."""
        public = self.private.public_key()
        if self.algorithm.startswith(("RS", "PS")):
            data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        elif self.algorithm == "EdDSA":
            data = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
        else:
            data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        return {**data, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def mint_key(algorithm: str = "RS256", kid: str | None = None) -> SigningKey:
    if algorithm.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(kid or uuid.uuid4().hex[:12], algorithm, private)


@dataclass
class Issuer:
    """The issuer's state; :meth:`start` serves it on a loopback port."""

    audience: str = "pop3"
    keys: list[SigningKey] = field(default_factory=lambda: [mint_key()])
    discovery: str = "openid"
    """``openid``: both documents; ``rfc8414``: only the authorization-server metadata."""
    down: bool = False
    """Every request is answered 503."""
    requests: Counter[str] = field(default_factory=Counter)
    opaque: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Opaque token -> its introspection answer."""
    redirects: dict[str, str] = field(default_factory=dict)
    """Path -> where a 302 sends the client instead of answering."""
    tls: ssl.SSLContext | None = None
    """Serve HTTPS with this context (default: plain HTTP, allowed on loopback)."""
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/realms/mail"

    @property
    def jwks_uri(self) -> str:
        return f"{self.base}/keys"

    @property
    def introspection_url(self) -> str:
        return f"{self.base}/introspect"

    def start(self) -> Issuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                issuer.requests[self.path] += 1
                if self.path in issuer.redirects:
                    self.send_response(302)
                    self.send_header("Location", issuer.redirects[self.path])
                    self.end_headers()
                    return
                document = issuer.document(self.path)
                self._answer(document)

            def do_POST(self) -> None:
                issuer.requests[self.path] += 1
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                if issuer.down or self.path != "/introspect":
                    self._answer(None)
                    return
                expected = b"Basic " + base64.b64encode(":".join(INTROSPECTION_CLIENT).encode())
                if self.headers.get("Authorization") != expected.decode():
                    self.send_response(401)
                    self.end_headers()
                    return
                token = form.get("token", [""])[0]
                self._answer(issuer.opaque.get(token, {"active": False}))

            def _answer(self, document: dict[str, Any] | None) -> None:
                if issuer.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                if document is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def document(self, path: str) -> dict[str, Any] | None:
        metadata = {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "introspection_endpoint": self.introspection_url,
        }
        if path == "/realms/mail/.well-known/openid-configuration" and self.discovery == "openid":
            return metadata
        if path == "/.well-known/oauth-authorization-server/realms/mail":
            return metadata
        if path == "/keys":
            return {"keys": [key.jwk() for key in self.keys]}
        return None

    def token(
        self,
        user: str,
        *,
        key: SigningKey | None = None,
        lifetime: float = 300,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token for ``user`` (``email``) signed by ``key`` (default: the first);
        ``claims`` override or add (``aud=...``, ``exp=...``; ``None`` removes one)."""
        key = key or self.keys[0]
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "sub": uuid.uuid4().hex,
            "email": user,
            "scope": "openid email pop3",
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
        }
        body.update(claims)
        body = {name: value for name, value in body.items() if value is not None}
        return jwt.encode(
            body, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **(headers or {})}
        )


def unsigned_token(claims: dict[str, Any]) -> str:
    """``alg: none``: a token anyone can make."""
    return jwt.encode(claims, None, algorithm="none")


def hs256_with_public_key(claims: dict[str, Any], key: SigningKey) -> str:
    """The classic confusion attack: HMAC keyed with the issuer's public key."""
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = _b64(json.dumps(header).encode()) + b"." + _b64(json.dumps(claims).encode())
    signature = hmac.new(key.public_pem(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(signature)).decode()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")
