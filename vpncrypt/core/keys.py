"""Client keys: 64 random bytes (AES-256-SIV), written as standard base64."""

from __future__ import annotations

import base64
import binascii
import secrets

from .wire import KEY_LEN


def new_key() -> bytes:
    """64 bytes from the OS's CSPRNG."""
    return secrets.token_bytes(KEY_LEN)


def encode_key(key: bytes) -> str:
    """Standard base64 with padding, 88 characters for a 64-byte key."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Raises ValueError with a message that never contains the key itself."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("key is not valid base64") from None
    if len(key) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes (88 base64 characters), not {len(key)}")
    return key
