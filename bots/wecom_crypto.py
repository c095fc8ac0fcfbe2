"""WeCom (企业微信) callback crypto: the official WXBizMsgCrypt algorithm, plus a safe XML reader.

The layout follows Tencent's reference implementation byte for byte:

- signature = SHA1 hex of the sorted strings [token, timestamp, nonce, encrypt], concatenated;
- key = base64decode(EncodingAESKey + "=") (32 bytes, AES-256), IV = key[:16], CBC mode;
- plaintext = 16 random bytes + 4-byte big-endian message length + message + receive id (the corp id),
  PKCS#7-padded to a 32-byte block (not AES's 16: the reference code pads to 32).

We are stricter than the reference code in two places, on purpose: every padding byte is checked (the
reference only reads the last one), and the signature is compared in constant time. Decryption is only ever
attempted after the signature has been verified, so nobody without the Token can probe the padding.

XML comes from the network, so `parse_flat_xml` refuses any DTD (no entity expansion, no external entities)
instead of relying on the expat version's own limits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
from xml.parsers import expat

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK_SIZE = 32  # the reference implementation's PKCS#7 block, twice AES's
RANDOM_PREFIX_BYTES = 16
AES_KEY_CHARS = 43  # EncodingAESKey is 43 base64 characters: 32 bytes without the trailing "="


class WeComCryptoError(Exception):
    """A callback that must be refused; the message is safe to log (it never contains key material)."""


class SignatureError(WeComCryptoError):
    """msg_signature does not match: not from WeCom, or a different Token."""


class DecryptError(WeComCryptoError):
    """The ciphertext is not valid base64, not whole blocks, badly padded, or its length field is wrong."""


class ReceiverIdError(WeComCryptoError):
    """The message decrypted, but it was sealed for another corp id (receive id)."""


class XmlError(WeComCryptoError):
    """The XML is malformed or declares a DTD/entities (refused outright)."""


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key behind a 43-character EncodingAESKey; `ValueError` if it is not one."""
    if len(encoding_aes_key) != AES_KEY_CHARS:
        raise ValueError(f"EncodingAESKey must be {AES_KEY_CHARS} characters, not {len(encoding_aes_key)}")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error as exc:
        raise ValueError("EncodingAESKey is not valid base64") from exc
    if len(key) != 32:
        raise ValueError("EncodingAESKey does not decode to 32 bytes")
    return key


def pkcs7_pad(data: bytes, block: int = BLOCK_SIZE) -> bytes:
    """Pad to a multiple of `block`; a whole block of padding is added when already aligned."""
    amount = block - len(data) % block
    return data + bytes([amount]) * amount


def pkcs7_unpad(data: bytes, block: int = BLOCK_SIZE) -> bytes:
    """Remove PKCS#7 padding, checking every padding byte; `DecryptError` if it is not valid."""
    if not data:
        raise DecryptError("empty plaintext")
    amount = data[-1]
    if not 1 <= amount <= block or amount > len(data) or data[-amount:] != bytes([amount]) * amount:
        raise DecryptError("bad padding")
    return data[:-amount]


class WeComCrypto:
    """Sign, verify, encrypt and decrypt callback payloads for one app (Token, EncodingAESKey, corp id)."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        if not token:
            raise ValueError("the callback Token is empty")
        if not receive_id:
            raise ValueError("the corp id (receive id) is empty")
        self._token = token
        self._key = decode_aes_key(encoding_aes_key)
        self._receive_id = receive_id.encode("utf-8")

    def __repr__(self) -> str:  # never show the Token or the key, even in a traceback's locals
        return f"WeComCrypto(receive_id={self._receive_id.decode()!r})"

    # -- signatures ------------------------------------------------------------------------------

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        """The msg_signature WeCom sends for these values."""
        joined = "".join(sorted([self._token, timestamp, nonce, encrypt]))
        return hashlib.sha1(joined.encode("utf-8")).hexdigest()

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        """`SignatureError` unless `msg_signature` matches (compared in constant time)."""
        expected = self.signature(timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected.encode("ascii"), msg_signature.lower().encode("utf-8")):
            raise SignatureError("msg_signature does not match")

    # -- AES ---------------------------------------------------------------------------------------

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))

    def encrypt(self, message: str | bytes, *, random_prefix: bytes | None = None) -> str:
        """Seal `message` for this corp id; returns the base64 text that goes in `<Encrypt>`/echostr."""
        body = message.encode("utf-8") if isinstance(message, str) else message
        prefix = os.urandom(RANDOM_PREFIX_BYTES) if random_prefix is None else random_prefix
        if len(prefix) != RANDOM_PREFIX_BYTES:
            raise ValueError(f"the random prefix must be {RANDOM_PREFIX_BYTES} bytes")
        plain = pkcs7_pad(prefix + struct.pack(">I", len(body)) + body + self._receive_id)
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")

    def decrypt_bytes(self, encrypt: str) -> bytes:
        """Open a sealed message; `DecryptError` or `ReceiverIdError` when it cannot be trusted."""
        try:
            sealed = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecryptError("ciphertext is not base64") from exc
        if not sealed or len(sealed) % BLOCK_SIZE:
            raise DecryptError("ciphertext is not a whole number of blocks")
        decryptor = self._cipher().decryptor()
        plain = pkcs7_unpad(decryptor.update(sealed) + decryptor.finalize())
        if len(plain) < RANDOM_PREFIX_BYTES + 4:
            raise DecryptError("plaintext too short")
        (length,) = struct.unpack(">I", plain[RANDOM_PREFIX_BYTES : RANDOM_PREFIX_BYTES + 4])
        start = RANDOM_PREFIX_BYTES + 4
        if start + length > len(plain):
            raise DecryptError("length field exceeds the plaintext")
        if not hmac.compare_digest(plain[start + length :], self._receive_id):
            raise ReceiverIdError("message is addressed to a different corp id")
        return plain[start : start + length]

    def decrypt(self, encrypt: str) -> str:
        """`decrypt_bytes` as UTF-8 text."""
        try:
            return self.decrypt_bytes(encrypt).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecryptError("plaintext is not UTF-8") from exc

    # -- the two callback shapes ------------------------------------------------------------------

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """URL verification (GET): check the signature over echostr, return its plaintext."""
        self.verify(msg_signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def decrypt_callback(self, msg_signature: str, timestamp: str, nonce: str, body: bytes | str) -> str:
        """A message callback (POST): read `<Encrypt>` from the outer XML, verify, return the inner XML."""
        encrypt = parse_flat_xml(body).get("Encrypt", "")
        if not encrypt:
            raise XmlError("no <Encrypt> element")
        self.verify(msg_signature, timestamp, nonce, encrypt)
        return self.decrypt(encrypt)

    def encrypt_reply(self, message: str, nonce: str, timestamp: str | None = None) -> str:
        """The passive-reply envelope (the shape WeCom POSTs too): Encrypt, MsgSignature, TimeStamp, Nonce."""
        stamp = timestamp or str(int(time.time()))
        encrypt = self.encrypt(message)
        return (
            f"<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
            f"<MsgSignature><![CDATA[{self.signature(stamp, nonce, encrypt)}]]></MsgSignature>"
            f"<TimeStamp>{stamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        )


def parse_flat_xml(data: bytes | str) -> dict[str, str]:
    """The text of each child of the root element (`<xml><MsgType>…</MsgType>…</xml>` → a dict).

    Deeper elements (e.g. an event's `<PicList><item>`) are skipped. Any DTD is refused before it can
    declare an entity, so neither entity expansion nor external entities can happen.
    """
    parser = expat.ParserCreate()
    fields: dict[str, str] = {}
    stack: list[str] = []
    text: list[str] = []

    def refuse(*_args: object) -> None:
        raise XmlError("DTDs and entity declarations are not accepted")

    def start(name: str, _attrs: dict[str, str]) -> None:
        stack.append(name)
        if len(stack) == 2:
            text.clear()

    def end(name: str) -> None:
        if len(stack) == 2:
            fields[name] = "".join(text)
        stack.pop()

    def characters(chunk: str) -> None:
        if len(stack) == 2:
            text.append(chunk)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise XmlError(f"malformed XML: {exc}") from exc
    return fields
