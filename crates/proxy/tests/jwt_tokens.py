"""Keys and tokens for crates/proxy/tests/jwt.rs, made with PyJWT and cryptography.

Reads a JSON request on stdin:
  {"tokens": {NAME: {"key": KEY, "alg": ALG, "claims": {...}, "headers": {...}}, ...}}
where KEY is one of the keys below ("rsa", "ec", "ed", "other-rsa"), and writes on stdout:
  {"jwks": {...the public keys of rsa, ec and ed...}, "tokens": {NAME: TOKEN, ...}}

Special ALG values make tokens PyJWT refuses to make, for hostile-input tests:
  "none"           an unsigned token (PyJWT's algorithm "none")
  "HS256-confused" HS256 whose secret is the RSA public key's PEM: the algorithm confusion
                   attack (PyJWT refuses an asymmetric key as an HMAC secret, so the HMAC is
                   computed here by hand)
"""

import base64
import hashlib
import hmac
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

KEYS = {
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "other-rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": ec.generate_private_key(ec.SECP256R1()),
    "ed": ed25519.Ed25519PrivateKey.generate(),
}
KIDS = {"rsa": "rsa-1", "other-rsa": "rsa-1", "ec": "ec-1", "ed": "ed-1"}


def jwk(name, algorithm):
    key = json.loads(algorithm.to_jwk(KEYS[name].public_key()))
    key["kid"] = KIDS[name]
    return key


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def confused(claims, headers):
    pem = (
        KEYS["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", **headers}
    signed = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    mac = hmac.new(pem, signed.encode(), hashlib.sha256).digest()
    return signed + "." + b64(mac)


def main():
    request = json.load(sys.stdin)
    tokens = {}
    for name, spec in request.get("tokens", {}).items():
        alg = spec["alg"]
        claims = spec.get("claims", {})
        headers = spec.get("headers", {})
        key = spec.get("key", "rsa")
        if alg == "none":
            tokens[name] = jwt.encode(claims, None, algorithm="none", headers=headers)
        elif alg == "HS256-confused":
            tokens[name] = confused(claims, {"kid": KIDS["rsa"], **headers})
        else:
            headers = {"kid": KIDS[key], **headers}
            tokens[name] = jwt.encode(claims, KEYS[key], algorithm=alg, headers=headers)
    jwks = {
        "keys": [
            jwk("rsa", RSAAlgorithm),
            jwk("ec", ECAlgorithm),
            jwk("ed", OKPAlgorithm),
        ]
    }
    json.dump({"jwks": jwks, "tokens": tokens}, sys.stdout)


if __name__ == "__main__":
    main()
