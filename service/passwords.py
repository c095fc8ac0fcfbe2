"""Password hashing for staff accounts: scrypt from the standard library, stored as a PHC string.

Why scrypt and not argon2: `hashlib.scrypt` is in every CPython built with OpenSSL ≥ 1.1 (all the ones
tuwen supports), so there is no new dependency with its own wheels to keep building for every platform the
container and the packages ship to; scrypt is memory-hard like argon2id, and OWASP's password storage
guide lists it as the choice when argon2id is not at hand. The cost is OWASP's scrypt line with 32 MiB per
hash: N = 2^15, r = 8, p = 3 (≈0.4 s on a 2-core server), so a stolen database costs a guesser that much
per guess and a login costs a person less than they notice.

A stored hash is `$scrypt$ln=15,r=8,p=3$<salt>$<hash>` (the PHC string format, unpadded base64): the KDF and
its parameters travel with each hash, so raising `CURRENT` later leaves every existing password working and
`needs_rehash` tells the login to store a stronger hash the next time its owner signs in. Hashes are
compared in constant time; an unknown user name costs the same as a wrong password (`verify_dummy`).
At most `MAX_PARALLEL` hashes run at once: a flood of login tries from many addresses queues up instead of
taking every core and 32 MiB each from the model.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass

SALT_BYTES = 16
HASH_BYTES = 32
MIN_LENGTH = 8
MAX_LENGTH = 1024  # characters; longer is not a password someone types
MAX_PARALLEL = 2


@dataclass(frozen=True)
class ScryptCost:
    """scrypt's parameters: N = 2**ln (CPU and memory), r (block size), p (parallel lanes)."""

    ln: int
    r: int
    p: int

    @property
    def memory_bytes(self) -> int:
        """What one hash needs (OpenSSL refuses a hash beyond `maxmem`, so it is passed explicitly)."""
        return 128 * self.r * (2**self.ln) + 128 * self.r * self.p + 1024 * 1024

    def phc_params(self) -> str:
        """The parameter part of the PHC string."""
        return f"ln={self.ln},r={self.r},p={self.p}"


CURRENT = ScryptCost(ln=15, r=8, p=3)
_LIMIT = threading.BoundedSemaphore(MAX_PARALLEL)


class PasswordRefused(ValueError):
    """A new password that is too short or too long; `reason` is "short" or "long"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_new_password(password: str) -> None:
    """Refuse a password shorter than MIN_LENGTH or longer than MAX_LENGTH characters."""
    if len(password) < MIN_LENGTH:
        raise PasswordRefused("short")
    if len(password) > MAX_LENGTH:
        raise PasswordRefused("long")


def hash_password(password: str, cost: ScryptCost | None = None) -> str:
    """A new PHC string for `password` with a fresh random salt."""
    cost = cost or CURRENT
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, cost, HASH_BYTES)
    return f"$scrypt${cost.phc_params()}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the PHC string `stored` (constant-time; False for a malformed string)."""
    parsed = _parse(stored)
    if parsed is None:
        verify_dummy(password)  # the same cost as a real check
        return False
    cost, salt, expected = parsed
    return hmac.compare_digest(_scrypt(password, salt, cost, len(expected)), expected)


def verify_dummy(password: str) -> None:
    """Spend what checking a real password costs (a login for an unknown name must not answer faster)."""
    _scrypt(password, b"\0" * SALT_BYTES, CURRENT, HASH_BYTES)


def needs_rehash(stored: str) -> bool:
    """Whether `stored` was made with other parameters than CURRENT (a successful login re-hashes it)."""
    parsed = _parse(stored)
    return parsed is None or parsed[0] != CURRENT


def _scrypt(password: str, salt: bytes, cost: ScryptCost, length: int) -> bytes:
    with _LIMIT:
        return hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"),
            salt=salt,
            n=2**cost.ln,
            r=cost.r,
            p=cost.p,
            maxmem=cost.memory_bytes,
            dklen=length,
        )


def _parse(stored: str) -> tuple[ScryptCost, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "scrypt":
        return None
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        cost = ScryptCost(ln=int(params["ln"]), r=int(params["r"]), p=int(params["p"]))
        salt, digest = _unb64(parts[3]), _unb64(parts[4])
    except (KeyError, ValueError):
        return None
    # A hash of absurd cost (a tampered row) must not take the server down when someone logs in.
    sane = 1 <= cost.ln <= 20 and 1 <= cost.r <= 32 and 1 <= cost.p <= 16
    if not (sane and salt and 16 <= len(digest) <= 64):
        return None
    return cost, salt, digest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
