"""The CMS (RFC 5652) pieces SCEP and profile signing need, on asn1crypto + cryptography.

SignedData with signed attributes (build, parse, verify), degenerate "certs-only" SignedData, and
EnvelopedData with RSA key transport (encrypt to a certificate, decrypt with our key).
Everything that parses untrusted bytes raises CMSError (a ValueError) with a reason a person can act on.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass, field

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class CMSError(ValueError):
    """The bytes are not the CMS structure we expected, or do not check out."""


class UnsupportedAlgorithm(CMSError):
    """A digest, signature or cipher we do not implement (SCEP answers badAlg)."""


class BadSignature(CMSError):
    """The signature or message digest does not verify (SCEP answers badMessageCheck)."""


_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}

# Content-encryption algorithms we read and write: name -> (key bytes, block cipher factory).
# Single DES is only read (old clients, micromdm's scepclient default); we never answer with it.
_CIPHERS = {
    "aes128_cbc": (16, algorithms.AES),
    "aes192_cbc": (24, algorithms.AES),
    "aes256_cbc": (32, algorithms.AES),
    "tripledes_3key": (24, TripleDES),
    "des": (8, lambda key: TripleDES(key * 3)),  # DES-EDE with K1=K2=K3 is single DES
}
WRITABLE_CIPHERS = ("aes128_cbc", "aes192_cbc", "aes256_cbc", "tripledes_3key")


def _cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(_cert_der(cert))


def _issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    tbs = _asn1_cert(cert)["tbs_certificate"]
    return cms.IssuerAndSerialNumber({"issuer": tbs["issuer"], "serial_number": tbs["serial_number"]})


def _matches_sid(sid, cert: x509.Certificate) -> bool:
    """Does a SignerIdentifier / RecipientIdentifier name this certificate?"""
    if sid.name == "issuer_and_serial_number":
        tbs = _asn1_cert(cert)["tbs_certificate"]
        return (sid.chosen["serial_number"].native == tbs["serial_number"].native
                and sid.chosen["issuer"] == tbs["issuer"])
    if sid.name == "subject_key_identifier":
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            return False
        return ski == sid.chosen.native
    return False


def _hash(name: str):
    try:
        return _HASHES[name]()
    except KeyError:
        raise UnsupportedAlgorithm(f"digest algorithm {name} is not supported") from None


def _digest(name: str, data: bytes) -> bytes:
    h = hashes.Hash(_hash(name))
    h.update(data)
    return h.finalize()


def _load_content_info(der: bytes, expected: str, spec=cms.ContentInfo):
    try:
        info = spec.load(ber_to_der(der), strict=True)
        content_type = info["content_type"].native
        if content_type != expected:
            raise CMSError(f"expected CMS {expected}, got {content_type}")
        if spec is cms.ContentInfo:
            info["content"].native  # noqa: B018  (force the lazy parse so malformed inner bytes fail here)
    except CMSError:
        raise
    except Exception as exc:  # asn1crypto raises ValueError, TypeError, OverflowError... on bad input
        raise CMSError(f"malformed CMS {expected}: {type(exc).__name__}") from None
    return info


# --- BER -> DER ---------------------------------------------------------------------------------
# Apple devices (and other NSS-derived CMS encoders) send BER: indefinite lengths and OCTET STRINGs split
# into constructed chunks. asn1crypto wants DER, so we normalise lengths and merge universal constructed
# OCTET STRINGs first. Context-tagged constructed values are kept as they are (without the schema an
# [0] IMPLICIT OCTET STRING cannot be told from an [0] EXPLICIT one); see _octets for those.

_MAX_BER_DEPTH = 64


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _read_tlv(data: bytes, pos: int, depth: int = 0) -> tuple[bytes, bytes, int]:
    """One BER element at ``pos`` -> (identifier octets, DER contents, position after it)."""
    if depth > _MAX_BER_DEPTH:
        raise CMSError("ASN.1 nested too deeply")
    end_of_data = len(data)
    if pos >= end_of_data:
        raise CMSError("truncated ASN.1")
    start = pos
    first = data[pos]
    pos += 1
    if first & 0x1F == 0x1F:                      # high tag number form
        while True:
            if pos >= end_of_data:
                raise CMSError("truncated ASN.1 tag")
            pos += 1
            if not data[pos - 1] & 0x80:
                break
    identifier = data[start:pos]
    constructed = bool(first & 0x20)
    if pos >= end_of_data:
        raise CMSError("truncated ASN.1 length")
    length_byte = data[pos]
    pos += 1
    children = []
    if length_byte == 0x80:                       # indefinite length: children up to end-of-contents
        if not constructed:
            raise CMSError("indefinite length on a primitive ASN.1 value")
        while data[pos:pos + 2] != b"\0\0":
            child_id, child_contents, pos = _read_tlv(data, pos, depth + 1)
            children.append((child_id, child_contents))
        pos += 2
    else:
        if length_byte & 0x80:
            count = length_byte & 0x7F
            if count > 4 or pos + count > end_of_data:
                raise CMSError("bad ASN.1 length")
            length = int.from_bytes(data[pos:pos + count], "big")
            pos += count
        else:
            length = length_byte
        end = pos + length
        if end > end_of_data:
            raise CMSError("ASN.1 length runs past the data")
        if not constructed:
            return identifier, data[pos:end], end
        while pos < end:
            child_id, child_contents, pos = _read_tlv(data, pos, depth + 1)
            children.append((child_id, child_contents))
        if pos != end:
            raise CMSError("ASN.1 children overrun their parent")
    if first == 0x24:                             # constructed OCTET STRING -> one primitive OCTET STRING
        if any(child_id != b"\x04" for child_id, _ in children):
            raise CMSError("constructed OCTET STRING with a non-OCTET STRING chunk")
        return b"\x04", b"".join(contents for _, contents in children), pos
    return identifier, b"".join(child_id + _der_length(len(c)) + c for child_id, c in children), pos


def ber_to_der(data: bytes) -> bytes:
    identifier, contents, end = _read_tlv(data, 0)
    if end != len(data):
        raise CMSError("trailing bytes after the ASN.1 value")
    return identifier + _der_length(len(contents)) + contents


def _octets(identifier_and_contents: bytes) -> bytes:
    """The value of an (implicitly tagged) OCTET STRING, primitive or split into constructed chunks."""
    identifier, contents, _ = _read_tlv(identifier_and_contents, 0)
    if not identifier[0] & 0x20:
        return contents
    chunks, pos = [], 0
    while pos < len(contents):
        chunk_start = pos
        _, _, pos = _read_tlv(contents, pos)
        chunks.append(_octets(contents[chunk_start:pos]))
    return b"".join(chunks)


class _EncryptedContentInfo(core.Sequence):
    """cms.EncryptedContentInfo, but encryptedContent may be constructed (BER), which asn1crypto refuses."""
    _fields = [
        ("content_type", cms.ContentType),
        ("content_encryption_algorithm", cms.EncryptionAlgorithm),
        ("encrypted_content", core.Any, {"optional": True}),
    ]


class _EnvelopedData(core.Sequence):
    _fields = [
        ("version", cms.CMSVersion),
        ("originator_info", cms.OriginatorInfo, {"implicit": 0, "optional": True}),
        ("recipient_infos", cms.RecipientInfos),
        ("encrypted_content_info", _EncryptedContentInfo),
        ("unprotected_attrs", cms.CMSAttributes, {"implicit": 1, "optional": True}),
    ]


class _EnvelopedContentInfo(core.Sequence):
    _fields = [("content_type", cms.ContentType), ("content", _EnvelopedData, {"explicit": 0})]


# --- SignedData -------------------------------------------------------------------------------

def attribute(oid: str, value: core.Asn1Value) -> cms.CMSAttribute:
    """A signed attribute with a single value; ``oid`` may be dotted or an asn1crypto name."""
    return cms.CMSAttribute({"type": oid, "values": [value]})


def build_signed_data(content: bytes | None, signer_key, signer_cert: x509.Certificate, *,
                      extra_certs: tuple = (), attributes: list | tuple = (), digest: str = "sha256") -> bytes:
    """ContentInfo(SignedData) over ``content`` (id-data), with contentType, messageDigest and signingTime
    plus ``attributes`` signed. ``content=None`` omits eContent (the digest is then over no bytes)."""
    data = content or b""
    signed = [
        attribute("content_type", cms.ContentType("data")),
        attribute("message_digest", core.OctetString(_digest(digest, data))),
        attribute("signing_time", cms.Time({"utc_time": dt.datetime.now(dt.timezone.utc).replace(microsecond=0)})),
        *attributes,
    ]
    signed_attrs = cms.CMSAttributes(signed)   # a SET OF: asn1crypto sorts it into DER order
    to_sign = signed_attrs.dump()
    if isinstance(signer_key, rsa.RSAPrivateKey):
        signature = signer_key.sign(to_sign, asym_padding.PKCS1v15(), _hash(digest))
        signature_algorithm = "rsassa_pkcs1v15"
    elif isinstance(signer_key, ec.EllipticCurvePrivateKey):
        signature = signer_key.sign(to_sign, ec.ECDSA(_hash(digest)))
        signature_algorithm = f"{digest}_ecdsa"
    else:
        raise UnsupportedAlgorithm(f"cannot sign with a {type(signer_key).__name__}")

    encap = {"content_type": "data"}
    if content is not None:
        encap["content"] = content
    certs = [signer_cert, *[c for c in extra_certs if c != signer_cert]]
    signed_data = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [cms.DigestAlgorithm({"algorithm": digest})],
        "encap_content_info": encap,
        "certificates": [cms.CertificateChoices(name="certificate", value=_asn1_cert(c)) for c in certs],
        "signer_infos": [cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value=_issuer_and_serial(signer_cert)),
            "digest_algorithm": cms.DigestAlgorithm({"algorithm": digest}),
            "signed_attrs": signed_attrs,
            "signature_algorithm": cms.SignedDigestAlgorithm({"algorithm": signature_algorithm}),
            "signature": signature,
        })],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()


def build_degenerate(certs: list[x509.Certificate]) -> bytes:
    """A certs-only SignedData (no content, no signers): how SCEP carries issued certificates."""
    signed_data = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [],
        "encap_content_info": {"content_type": "data"},
        "certificates": [cms.CertificateChoices(name="certificate", value=_asn1_cert(c)) for c in certs],
        "signer_infos": [],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()


@dataclass
class SignedMessage:
    """A parsed SignedData with one signer, read eagerly into plain values. ``verify()`` before trusting it."""
    content: bytes
    certificates: list
    signer_cert: x509.Certificate | None
    digest_algorithm: str                            # asn1crypto name ("sha256") or dotted OID when unknown
    attributes: dict = field(default_factory=dict)   # dotted OID -> first value, decoded (str/bytes/...)
    content_type: str = "1.2.840.113549.1.7.1"       # dotted eContentType (id-data)
    signed_attrs_der: bytes | None = None            # the signed attributes as the SET OF that was signed
    signature: bytes = b""
    signature_algorithm: str = ""                    # "rsassa_pkcs1v15", "ecdsa", ... or dotted OID

    def attribute(self, oid: str):
        return self.attributes.get(oid)

    def verify(self, public_key=None) -> None:
        """Check the messageDigest and the signature (by ``public_key``, default the signer certificate's).
        Raises BadSignature or UnsupportedAlgorithm."""
        if public_key is None:
            if self.signer_cert is None:
                raise BadSignature("the signer's certificate is not in the message")
            try:
                public_key = self.signer_cert.public_key()
            except (ValueError, CryptographyUnsupported):
                raise UnsupportedAlgorithm("the signer certificate's public key cannot be read") from None
        if self.signed_attrs_der is None:
            raise BadSignature("the signer has no signed attributes")
        chosen_hash = _hash(self.digest_algorithm)
        if self.attributes.get(_OID_CONTENT_TYPE) != self.content_type:
            raise BadSignature("signed contentType does not match the content")
        if self.attributes.get(_OID_MESSAGE_DIGEST) != _digest(self.digest_algorithm, self.content):
            raise BadSignature("message digest does not match the content")
        algo = self.signature_algorithm
        if not ((algo == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey))
                or (algo == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey))):
            raise UnsupportedAlgorithm(f"signature algorithm {algo} with a {type(public_key).__name__}")
        # The signer signed the DER (sorted) SET OF. Go's pkcs7 - micromdm's scepclient - sends the attributes
        # unsorted while signing them sorted, so try the bytes as sent, then in DER order (as OpenSSL does).
        for signed_bytes in dict.fromkeys((self.signed_attrs_der, _der_sorted_set(self.signed_attrs_der))):
            try:
                if algo == "rsassa_pkcs1v15":
                    public_key.verify(self.signature, signed_bytes, asym_padding.PKCS1v15(), chosen_hash)
                else:
                    public_key.verify(self.signature, signed_bytes, ec.ECDSA(chosen_hash))
                return
            except InvalidSignature:
                continue
        raise BadSignature("signature does not verify")


def _der_sorted_set(set_der: bytes) -> bytes:
    """The same SET OF with its elements in DER order (sorted by their encodings)."""
    identifier, contents, _ = _read_tlv(set_der, 0)
    elements, pos = [], 0
    while pos < len(contents):
        start = pos
        _, _, pos = _read_tlv(contents, pos)
        elements.append(contents[start:pos])
    body = b"".join(sorted(elements))
    return identifier + _der_length(len(body)) + body


_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"


def _decode_attribute_value(value) -> object:
    """The first value of an attribute as a Python value (strings, bytes, ints), whatever its universal type."""
    parsed = core.load(value.dump())
    return parsed.native


def parse_signed_data(der: bytes) -> SignedMessage:
    """Parse a ContentInfo(SignedData) with exactly one signer. Does not verify (see SignedMessage.verify)."""
    info = _load_content_info(der, "signed_data")
    try:
        signed_data = info["content"]
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise CMSError(f"expected one signer, found {len(signer_infos)}")
        signer_info = signer_infos[0]
        encap = signed_data["encap_content_info"]
        content = bytes(encap["content"]) if encap["content"].native is not None else b""
        certificates = []
        for choice in signed_data["certificates"] or []:
            if choice.name == "certificate":
                certificates.append(x509.load_der_x509_certificate(choice.chosen.dump()))
        signer_cert = next((c for c in certificates if _matches_sid(signer_info["sid"], c)), None)
        attributes = {}
        for attr in signer_info["signed_attrs"] or []:
            values = attr["values"]
            if len(values):
                attributes[attr["type"].dotted] = _decode_attribute_value(values[0])
        digest = signer_info["digest_algorithm"]["algorithm"].native
        content_type = encap["content_type"].dotted
        signed_attrs_der = None
        if signer_info["signed_attrs"].native is not None:
            # The signature covers the attributes encoded as a SET OF, not with their [0] IMPLICIT tag.
            signed_attrs_der = b"\x31" + signer_info["signed_attrs"].dump()[1:]
        signature = signer_info["signature"].native
        signature_algorithm = signer_info["signature_algorithm"]
        try:
            signature_name = signature_algorithm.signature_algo
        except ValueError:
            signature_name = signature_algorithm["algorithm"].dotted
    except CMSError:
        raise
    except Exception as exc:
        raise CMSError(f"malformed SignedData: {type(exc).__name__}") from None
    return SignedMessage(content, certificates, signer_cert, digest, attributes, content_type,
                         signed_attrs_der, signature, signature_name)


def parse_degenerate(der: bytes) -> list[x509.Certificate]:
    """The certificates of a certs-only SignedData."""
    info = _load_content_info(der, "signed_data")
    try:
        return [x509.load_der_x509_certificate(choice.chosen.dump())
                for choice in info["content"]["certificates"] or [] if choice.name == "certificate"]
    except Exception as exc:
        raise CMSError(f"malformed certificate list: {type(exc).__name__}") from None


# --- EnvelopedData ----------------------------------------------------------------------------

def encrypt_enveloped(content: bytes, recipient_cert: x509.Certificate, cipher: str = "aes128_cbc") -> bytes:
    """ContentInfo(EnvelopedData): ``content`` encrypted with a fresh key, the key RSA-encrypted (PKCS#1 v1.5)
    to ``recipient_cert`` - the key transport every SCEP client implements."""
    if cipher not in WRITABLE_CIPHERS:
        raise UnsupportedAlgorithm(f"content encryption {cipher} is not supported")
    public_key = recipient_cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise UnsupportedAlgorithm("the recipient certificate does not hold an RSA key")
    key_len, factory = _CIPHERS[cipher]
    key = os.urandom(key_len)
    block = factory(key)
    iv = os.urandom(block.block_size // 8)
    padder = padding.PKCS7(block.block_size).padder()
    encryptor = Cipher(block, modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    recipient = cms.KeyTransRecipientInfo({
        "version": "v0",
        "rid": cms.RecipientIdentifier(name="issuer_and_serial_number", value=_issuer_and_serial(recipient_cert)),
        "key_encryption_algorithm": cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}),
        "encrypted_key": public_key.encrypt(key, asym_padding.PKCS1v15()),
    })
    enveloped = cms.EnvelopedData({
        "version": "v0",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=recipient)],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": cipher, "parameters": core.OctetString(iv)},
            "encrypted_content": ciphertext,
        },
    })
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


@dataclass
class Decrypted:
    content: bytes
    cipher: str          # the content-encryption algorithm the sender chose (asn1crypto name)


def decrypt_enveloped(der: bytes, private_key, recipient_cert: x509.Certificate | None = None) -> Decrypted:
    """Decrypt a ContentInfo(EnvelopedData) addressed to ``recipient_cert`` (or to any key-transport recipient
    when None). Any failure to unwrap or unpad is one error, so it cannot be used as a padding oracle."""
    info = _load_content_info(der, "enveloped_data", spec=_EnvelopedContentInfo)
    try:
        enveloped = info["content"]
        eci = enveloped["encrypted_content_info"]
        cipher = eci["content_encryption_algorithm"]["algorithm"].native
    except Exception as exc:
        raise CMSError(f"malformed EnvelopedData: {type(exc).__name__}") from None
    if cipher not in _CIPHERS:
        raise UnsupportedAlgorithm(f"content encryption {cipher} is not supported")
    try:
        recipients = []          # (key transport algorithm, encrypted content key)
        for recipient in enveloped["recipient_infos"]:
            if recipient.name == "ktri" and (recipient_cert is None
                                             or _matches_sid(recipient.chosen["rid"], recipient_cert)):
                recipients.append((recipient.chosen["key_encryption_algorithm"]["algorithm"].native,
                                   recipient.chosen["encrypted_key"].native))
        iv = eci["content_encryption_algorithm"]["parameters"].native
        encrypted = eci["encrypted_content"]
        # An Any field keeps its original tag in _header; _octets reads primitive and constructed forms.
        ciphertext = _octets(encrypted._header + encrypted.contents) if encrypted.contents is not None else b""
    except Exception as exc:
        raise CMSError(f"malformed EnvelopedData: {type(exc).__name__}") from None
    if not recipients:
        raise CMSError("the EnvelopedData is not addressed to our certificate")
    key_len, factory = _CIPHERS[cipher]
    for key_algorithm, encrypted_key in recipients:
        if key_algorithm != "rsaes_pkcs1v15":
            raise UnsupportedAlgorithm(f"key transport {key_algorithm} is not supported")
        try:
            key = private_key.decrypt(encrypted_key, asym_padding.PKCS1v15())
            if len(key) != key_len:
                raise ValueError("wrong key length")
            block = factory(key)
            if not isinstance(iv, bytes) or len(iv) != block.block_size // 8 or len(ciphertext) % len(iv):
                raise ValueError("bad IV or ciphertext length")
            decryptor = Cipher(block, modes.CBC(iv)).decryptor()
            padded = decryptor.update(ciphertext) + decryptor.finalize()
            unpadder = padding.PKCS7(block.block_size).unpadder()
            return Decrypted(unpadder.update(padded) + unpadder.finalize(), cipher)
        except ValueError:
            continue
    raise CMSError("could not decrypt the EnvelopedData with our key")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cert_sha256(cert: x509.Certificate) -> str:
    return sha256_hex(_cert_der(cert))
