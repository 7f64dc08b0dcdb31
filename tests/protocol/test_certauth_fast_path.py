"""The fast Mdm-Signature parse (``certauth._fast_signed``: a strict DER walk of only what verification
needs) against the general asn1crypto path: for real signatures (cryptography and openssl, with and
without signed attributes, with a certificate chain) and for every truncation and many byte flips of
them, both paths accept the same inputs, return the same signer and refuse with the same reason (where
the general path finds a malformed element in a part the fast path only frames, such as a signingTime
inside the signed attributes, the fast path refuses too: the signature over those attributes fails).
"""
from __future__ import annotations

import base64
import random
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from mdm.protocol import certauth

from device_identity import DeviceIdentity, sign_cryptography, sign_openssl


MALFORMED = "Mdm-Signature is not a CMS structure"


def general_path(header: str, body: bytes, ca) -> tuple[str, object]:
    """The asn1crypto path alone (the fast path switched off for this call)."""
    original = certauth._fast_signed
    certauth._fast_signed = lambda der: None
    try:
        return outcome(header, body, ca)
    finally:
        certauth._fast_signed = original


def outcome(header: str, body: bytes, ca) -> tuple[str, object]:
    try:
        return "accepted", certauth.fingerprint(certauth.verify_mdm_signature(header, body, ca))
    except certauth.AuthError as exc:
        return "refused", str(exc)


def sign_openssl_with_chain(body: bytes, ident, ca_cert, tmp_path) -> str:
    """openssl cms with the CA certificate carried too (devices may send their chain)."""
    extra = tmp_path / "chain.pem"
    extra.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "signer.pem").write_bytes(ident.cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "signer.key").write_bytes(ident.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "body").write_bytes(body)
    der = subprocess.run(["openssl", "cms", "-sign", "-binary", "-md", "sha256", "-certfile", str(extra),
                          "-signer", str(tmp_path / "signer.pem"), "-inkey", str(tmp_path / "signer.key"),
                          "-in", str(tmp_path / "body"), "-outform", "DER"], check=True, capture_output=True).stdout
    return base64.b64encode(der).decode()


def signatures(app, ca, tmp_path, body: bytes) -> dict[str, tuple[str, DeviceIdentity]]:
    ident = DeviceIdentity(app)
    return {
        "cryptography": (sign_cryptography(body, ident.cert, ident.key), ident),
        "cryptography, no attributes": (sign_cryptography(body, ident.cert, ident.key, attributes=False), ident),
        "openssl sha1": (sign_openssl(body, ident.cert, ident.key, tmp_path, "sha1"), ident),
        "openssl with chain": (sign_openssl_with_chain(body, ident, ca, tmp_path), ident),
    }


def test_real_signatures_take_the_fast_path_and_verify(app, ca, tmp_path):
    body = b"<plist>an Idle</plist>"
    for name, (header, ident) in signatures(app, ca, tmp_path, body).items():
        assert certauth._fast_signed(base64.b64decode(header)) is not None, name
        assert outcome(header, body, ca) == ("accepted", certauth.fingerprint(ident.cert)), name
        assert outcome(header, body + b" ", ca) == general_path(header, body + b" ", ca), name
        assert outcome(header, body + b" ", ca)[0] == "refused", name


# A flipped bit can make a certificate's serial number non-positive: cryptography loads it with a warning.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_every_truncation_and_many_byte_flips_are_decided_as_the_general_path_decides(app, ca, tmp_path):
    body = b"<plist>an Idle</plist>"
    rng = random.Random(12)
    compared = refused = 0
    for name, (header, _) in signatures(app, ca, tmp_path, body).items():
        der = base64.b64decode(header)
        variants = [der[:cut] for cut in range(0, len(der), 7)] + [der + b"\x00"]
        for _ in range(400):
            flipped = bytearray(der)
            flipped[rng.randrange(len(der))] ^= 1 << rng.randrange(8)
            variants.append(bytes(flipped))
        for variant in variants:
            mutated = base64.b64encode(variant).decode()
            fast, general = outcome(mutated, body, ca), general_path(mutated, body, ca)
            if general == ("refused", MALFORMED):
                # Malformed inside a part the fast path only frames (e.g. a signingTime that is not a
                # time, inside the signed attributes): refused there too, by the signature check.
                assert fast[0] == "refused", (name, variant.hex())
            else:
                assert fast == general, (name, variant.hex())
            compared += 1
            refused += fast[0] == "refused"
    assert refused > compared * 0.9     # the mutations are mostly refused, by both paths alike


def test_a_ber_indefinite_length_signature_is_left_to_the_general_path(app, ca):
    body = b"<plist>an Idle</plist>"
    ident = DeviceIdentity(app)
    der = base64.b64decode(sign_cryptography(body, ident.cert, ident.key))
    # The outer SEQUENCE re-encoded with an indefinite length (BER), closed by end-of-contents.
    _, _, head, stop = certauth._tlv(der, 0, len(der))
    ber = b"\x30\x80" + der[head:stop] + b"\x00\x00"
    assert certauth._fast_signed(ber) is None
    header = base64.b64encode(ber).decode()
    assert outcome(header, body, ca) == general_path(header, body, ca)
