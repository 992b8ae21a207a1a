"""core/siv.py: which AES-SIV class the core uses, and what the daemon logs about it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from vpncrypt.core import siv
from vpncrypt.core.peer import Peer
from vpncrypt.core.wire import TO_SERVER, CipherUnusable, check_cipher


@pytest.fixture
def restore(monkeypatch):
    """Put the class in use back after the test."""
    monkeypatch.setattr(siv, "AESSIV", siv.AESSIV)


class FakeCompiled:
    """Stands in for vpncrypt._siv.AesSiv, so these tests run where it is not built."""

    def __init__(self, key):
        self.key = key

    def encrypt(self, data, associated_data):
        return bytes(16) + data

    def decrypt(self, data, associated_data):
        return data[16:]


def test_the_compiled_class_unless_the_pure_path_is_asked_for(restore, monkeypatch):
    monkeypatch.setattr(siv, "CompiledAESSIV", FakeCompiled)
    monkeypatch.setattr(siv, "OPENSSL_VERSION", "OpenSSL 3.9.9 1 Jan 2030")
    monkeypatch.setattr(siv, "compiled_engine", lambda: "aes-ni")
    assert siv.choose(False) == "compiled AES-SIV (OpenSSL 3.9.9 1 Jan 2030, CMAC on aes-ni)"
    assert siv.AESSIV is FakeCompiled
    assert siv.choose(True, "VPNCRYPT_PURE_PYTHON=1") == (
        "cryptography's AESSIV (pure-Python path: VPNCRYPT_PURE_PYTHON=1)")
    assert siv.AESSIV is AESSIV


def test_the_pure_path_when_the_extension_is_not_built(restore, monkeypatch):
    monkeypatch.setattr(siv, "CompiledAESSIV", None)
    monkeypatch.setattr(siv, "NOT_BUILT", "the compiled module is not built: No module named 'vpncrypt._siv'")
    assert siv.choose(False) == ("cryptography's AESSIV (pure-Python path: the compiled module is not built: "
                                 "No module named 'vpncrypt._siv')")
    assert siv.AESSIV is AESSIV


def test_peers_make_their_contexts_with_the_class_chosen(restore, monkeypatch):
    monkeypatch.setattr(siv, "CompiledAESSIV", FakeCompiled)
    siv.choose(False)
    peer = Peer(1, bytes(64), key_epoch=0, server_id=1, send_direction=TO_SERVER, now=1_700_000_000.0)
    epoch = 1_700_000_000 // peer.epoch_seconds
    assert type(peer.context_for(epoch)) is FakeCompiled
    assert type(peer.new_context(epoch)) is FakeCompiled
    siv.choose(True, "test")
    assert type(peer.new_context(max(peer.contexts))) is AESSIV


def test_check_cipher_checks_the_class_in_use(restore, monkeypatch):
    class Broken(FakeCompiled):
        def decrypt(self, data, associated_data):
            raise ValueError("bad")

    monkeypatch.setattr(siv, "CompiledAESSIV", Broken)
    monkeypatch.setattr(siv, "OPENSSL_VERSION", "OpenSSL 3.9.9 1 Jan 2030")
    siv.choose(False)
    with pytest.raises(CipherUnusable, match=r"^the compiled AES-SIV \(OpenSSL 3.9.9 1 Jan 2030\) cannot seal an "
                                             r"empty payload \(bad\); set VPNCRYPT_PURE_PYTHON=1 to use cryptography's$"):
        check_cipher()
    siv.choose(True, "test")
    check_cipher()  # cryptography's works
