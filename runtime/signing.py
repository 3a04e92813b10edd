"""Signed bundles: Ed25519 (RFC 8032) over the exact bytes of a bundle's manifest.json, which lists the
sha256 of every artifact and of the runtime files, so one signature covers everything a bundle runs.

Plain Python (hashlib and integers), so a device verifies with the runtime alone: no dependency added
to the mobile side. A verification takes a few milliseconds, once per bundle. Keys are PEM files as
`openssl genpkey -algorithm ed25519` writes them (PKCS#8 private key, SubjectPublicKeyInfo public
key); `neurosurgeon keygen` writes the same. The signature is manifest.sig beside the manifest.

The arithmetic is RFC 8032's reference (section 6), in extended twisted Edwards coordinates.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from .errors import BundleError, NeurosurgeonError
from .jsonfile import JsonFormat

__all__ = ["SIGNATURE_FILE", "SIGNATURE_FORMAT", "SigningKeyError", "key_id", "private_key_pem", "public_key",
           "public_key_pem", "read_private_key", "read_public_key", "sign", "sign_manifest", "verify",
           "verify_manifest"]

SIGNATURE_FILE = "manifest.sig"


class SigningKeyError(NeurosurgeonError):
    """A key file that is missing, unreadable or not an Ed25519 key in PEM."""


SIGNATURE_FORMAT = JsonFormat("neurosurgeon-signature", 1, "bundle signature", BundleError)

_P = 2 ** 255 - 19
_Q = 2 ** 252 + 27742317777372353535851937790883648493  # the group order
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _inverse(x: int) -> int:
    return pow(x, _P - 2, _P)


def _add(a: tuple, b: tuple) -> tuple:
    x = (a[1] - a[0]) * (b[1] - b[0]) % _P
    y = (a[1] + a[0]) * (b[1] + b[0]) % _P
    c = 2 * a[3] * b[3] * _D % _P
    z = 2 * a[2] * b[2] % _P
    e, f, g, h = y - x, z - c, z + c, y + x
    return e * f, g * h, f * g, e * h


def _multiply(scalar: int, point: tuple) -> tuple:
    result = (0, 1, 1, 0)  # the neutral element
    while scalar > 0:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _equal(a: tuple, b: tuple) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * _inverse(_D * y * y + 1)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    return _P - x if (x & 1) != sign else x


_GY = 4 * _inverse(5) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)


def _compress(point: tuple) -> bytes:
    z = _inverse(point[2])
    x, y = point[0] * z % _P, point[1] * z % _P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


def _decompress(data: bytes) -> tuple | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.sha512(data).digest(), "little") % _Q


def _expand(seed: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(seed).digest()
    a = int.from_bytes(digest[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, digest[32:]


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte private key (seed)."""
    return _compress(_multiply(_expand(seed)[0], _G))


def sign(seed: bytes, message: bytes) -> bytes:
    a, prefix = _expand(seed)
    public = _compress(_multiply(a, _G))
    r = _hash(prefix + message)
    big_r = _compress(_multiply(r, _G))
    s = (r + _hash(big_r + public + message) * a) % _Q
    return big_r + int.to_bytes(s, 32, "little")


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    if len(public) != 32 or len(signature) != 64:
        return False
    point_a, point_r = _decompress(public), _decompress(signature[:32])
    if point_a is None or point_r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _Q:
        return False
    h = _hash(signature[:32] + public + message)
    return _equal(_multiply(s, _G), _add(point_r, _multiply(h, point_a)))


# -- keys as PEM ----------------------------------------------------------------------------------

# DER of PKCS#8 (RFC 8410) and SubjectPublicKeyInfo for Ed25519 (OID 1.3.101.112), before the 32 key bytes.
_PRIVATE_DER = bytes.fromhex("302e020100300506032b657004220420")
_PUBLIC_DER = bytes.fromhex("302a300506032b6570032100")
_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END \1-----")


def _pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode()
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def private_key_pem(seed: bytes) -> str:
    return _pem("PRIVATE KEY", _PRIVATE_DER + seed)


def public_key_pem(public: bytes) -> str:
    return _pem("PUBLIC KEY", _PUBLIC_DER + public)


def _read_pem(path: str | Path, label: str, prefix: bytes, what: str) -> bytes:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SigningKeyError(f"{path}: cannot read the {what}: {getattr(err, 'strerror', None) or err}") from None
    for found_label, body in _PEM.findall(text):
        if found_label == label:
            der = base64.b64decode("".join(body.split()))
            if len(der) == len(prefix) + 32 and der.startswith(prefix):
                return der[len(prefix):]
            raise SigningKeyError(f"{path}: the {label} is not an Ed25519 key (make one with `neurosurgeon keygen` or "
                            "`openssl genpkey -algorithm ed25519`)")
    raise SigningKeyError(f"{path}: no PEM '{label}' block in it (expected an Ed25519 {what})")


def read_private_key(path: str | Path) -> bytes:
    """The 32-byte seed of an Ed25519 private key PEM."""
    return _read_pem(path, "PRIVATE KEY", _PRIVATE_DER, "private key")


def read_public_key(path: str | Path) -> bytes:
    """The 32-byte Ed25519 public key of a PEM (a private key's PEM gives its public key too)."""
    try:
        return _read_pem(path, "PUBLIC KEY", _PUBLIC_DER, "public key")
    except SigningKeyError as err:
        try:
            return public_key(read_private_key(path))
        except SigningKeyError:
            raise err from None


def key_id(public: bytes) -> str:
    """A short name for a public key in messages: the first 16 hex digits of its sha256."""
    return hashlib.sha256(public).hexdigest()[:16]


# -- bundles --------------------------------------------------------------------------------------


def sign_manifest(bundle_dir: Path, seed: bytes, manifest: str = "manifest.json") -> Path:
    """Write manifest.sig: the signature of the manifest's bytes, with the key's id."""
    public = public_key(seed)
    record = {**SIGNATURE_FORMAT.stamp(), "algorithm": "ed25519", "key_id": key_id(public), "signed_file": manifest,
              "signature": base64.b64encode(sign(seed, (bundle_dir / manifest).read_bytes())).decode()}
    return SIGNATURE_FORMAT.write(bundle_dir / SIGNATURE_FILE, record)


def verify_manifest(bundle_dir: Path, public: bytes, manifest: str = "manifest.json") -> bytes:
    """The manifest's bytes, if manifest.sig is their Ed25519 signature by `public`; BundleError otherwise."""
    path = bundle_dir / SIGNATURE_FILE
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not signed ({SIGNATURE_FILE} is missing), and a trusted key "
                          f"({key_id(public)}) is configured: refusing to load it")
    record = SIGNATURE_FORMAT.read(path)
    try:
        signature = base64.b64decode(record["signature"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{path}: the signature is not base64") from None
    data = (bundle_dir / manifest).read_bytes()
    if record.get("algorithm") != "ed25519" or not verify(public, data, signature):
        signer = record.get("key_id", "?")
        raise BundleError(f"{bundle_dir}: the manifest's signature (key {signer}) does not verify with the trusted key "
                          f"{key_id(public)}: the bundle was changed after signing, or signed by another key; "
                          "refusing to load it")
    return data
