"""Known-answer tests for pyike.crypto from published test vectors.

Every vector is copied from the cited RFC section (hex kept in the RFCs'
grouping where that helps comparison) and never computed by pyike itself.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pyike import algorithms
from pyike.crypto import (
    ALGORITHM_IDENTIFIERS,
    ED25519_ALGORITHM_IDENTIFIER,
    AuthenticationError,
    SkCipher,
    dh_from_private,
    dh_public_length,
    integ_mac,
    prf,
    verify_auth,
)
from pyike.registry import AuthMethod, DhId, EncrId, HashAlgorithm, IntegId, PrfId


def h(text: str) -> bytes:
    """Hex with the RFCs' spaces and line breaks removed."""
    return bytes.fromhex("".join(text.split()))


# --------------------------------------------------------------------------- PRF / INTEG

HI_THERE = b"Hi There"
WHAT_DO_YA = b"what do ya want for nothing?"

# RFC 4868 2.7.1 (test cases PRF-1 and PRF-2, identical to RFC 4231 4.2 and
# 4.3) for the SHA-2 PRFs; RFC 2202 3 test case 1 for PRF_HMAC_SHA1.
PRF_VECTORS = [
    pytest.param(
        PrfId.HMAC_SHA2_256,
        b"\x0b" * 20,
        HI_THERE,
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        id="RFC4868-PRF-1-sha256",
    ),
    pytest.param(
        PrfId.HMAC_SHA2_384,
        b"\x0b" * 20,
        HI_THERE,
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec6"
        "82aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
        id="RFC4868-PRF-1-sha384",
    ),
    pytest.param(
        PrfId.HMAC_SHA2_512,
        b"\x0b" * 20,
        HI_THERE,
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        id="RFC4868-PRF-1-sha512",
    ),
    pytest.param(
        PrfId.HMAC_SHA2_256,
        b"Jefe",
        WHAT_DO_YA,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        id="RFC4868-PRF-2-sha256",
    ),
    pytest.param(
        PrfId.HMAC_SHA2_384,
        b"Jefe",
        WHAT_DO_YA,
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47"
        "e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
        id="RFC4868-PRF-2-sha384",
    ),
    pytest.param(
        PrfId.HMAC_SHA2_512,
        b"Jefe",
        WHAT_DO_YA,
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        id="RFC4868-PRF-2-sha512",
    ),
    pytest.param(
        PrfId.HMAC_SHA1,
        b"\x0b" * 20,
        HI_THERE,
        "b617318655057264e28bc0b6fb378c8ef146be00",
        id="RFC2202-TC1-sha1",
    ),
]


@pytest.mark.parametrize(("alg", "key", "data", "expected"), PRF_VECTORS)
def test_prf_published_vectors(alg: PrfId, key: bytes, data: bytes, expected: str) -> None:
    assert prf(alg, key, data) == h(expected)


# RFC 4868 2.7.2.1-2.7.2.3 (AUTH256/384/512 test cases 1 and 2): the truncated
# HMAC-SHA-256-128 / -384-192 / -512-256 values. RFC 2202 3 test case 5 for
# HMAC-SHA-1-96 (the RFC 2404 truncation).
INTEG_VECTORS = [
    pytest.param(
        IntegId.HMAC_SHA2_256_128,
        b"\x0b" * 32,
        HI_THERE,
        "198a607eb44bfbc69903a0f1cf2bbdc5",
        id="RFC4868-AUTH256-1",
    ),
    pytest.param(
        IntegId.HMAC_SHA2_256_128,
        b"Jefe" * 8,
        WHAT_DO_YA,
        "167f928588c5cc2eef8e3093caa0e87c",
        id="RFC4868-AUTH256-2",
    ),
    pytest.param(
        IntegId.HMAC_SHA2_384_192,
        b"\x0b" * 48,
        HI_THERE,
        "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973",
        id="RFC4868-AUTH384-1",
    ),
    pytest.param(
        IntegId.HMAC_SHA2_384_192,
        b"Jefe" * 12,
        WHAT_DO_YA,
        "2c7353974f1842fd66d53c452ca42122b28c0b594cfb184d",
        id="RFC4868-AUTH384-2",
    ),
    pytest.param(
        IntegId.HMAC_SHA2_512_256,
        b"\x0b" * 64,
        HI_THERE,
        "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8",
        id="RFC4868-AUTH512-1",
    ),
    pytest.param(
        IntegId.HMAC_SHA2_512_256,
        b"Jefe" * 16,
        WHAT_DO_YA,
        "cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454",
        id="RFC4868-AUTH512-2",
    ),
    pytest.param(
        IntegId.HMAC_SHA1_96,
        b"\x0c" * 20,
        b"Test With Truncation",
        "4c1a03424b55e07fe7f27be1",
        id="RFC2202-TC5-sha1-96",
    ),
]


@pytest.mark.parametrize(("integ", "key", "data", "expected"), INTEG_VECTORS)
def test_integ_published_vectors(integ: IntegId, key: bytes, data: bytes, expected: str) -> None:
    assert integ_mac(integ, key, data) == h(expected)


# --------------------------------------------------------------------------- RFC 5903 ECDH

# RFC 5903 section 8.1 / 8.2 / 8.3: i, g^i, r, g^r, the KEi/KEr payloads and g^ir.
RFC5903 = {
    DhId.ECP_256: dict(
        i="C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
        gix="DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180",
        giy="5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
        kei="""00000048 00130000 DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF
               945D0C37 72581180 5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58
               389E0577 B8990BB3""",
        r="C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
        grx="D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63",
        gry="56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
        ker="""00000048 00130000 D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C
               736FC755 4494BF63 56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83
               53E74F33 039872AB""",
        girx="D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE",
    ),
    DhId.ECP_384: dict(
        i="""099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655
             E35B5380 41E649EE 3FAEF896 783AB194""",
        gix="""667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6
               DE3AC808 ACB4BDB4 C88732AE E95F41AA""",
        giy="""9482ED1F C0EEB9CA FC498462 5CCFC23F 65032149 E0E144AD A0241815 35A0F38E
               EB9FCFF3 C2C947DA E69B4C63 4573A81C""",
        kei="""00000068 00140000 667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3
               1634FE72 B4C55EE6 DE3AC808 ACB4BDB4 C88732AE E95F41AA 9482ED1F C0EEB9CA
               FC498462 5CCFC23F 65032149 E0E144AD A0241815 35A0F38E EB9FCFF3 C2C947DA
               E69B4C63 4573A81C""",
        r="""41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942
             E0308312 916B8ED2 960E4BD5 5A7448FC""",
        grx="""E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D
               0D1AC43A 0336DEF9 6FDA41D0 774A3571""",
        gry="""DCFBEC7A ACF31964 72169E83 8430367F 66EEBE3C 6E70C416 DD5F0C68 759DD1FF
               F83FA401 42209DFF 5EAAD96D B9E6386C""",
        ker="""00000068 00140000 E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D
               83CFA417 32BC509D 0D1AC43A 0336DEF9 6FDA41D0 774A3571 DCFBEC7A ACF31964
               72169E83 8430367F 66EEBE3C 6E70C416 DD5F0C68 759DD1FF F83FA401 42209DFF
               5EAAD96D B9E6386C""",
        girx="""11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4
                D6031355 69B9E9D0 9CF5D4A2 70F59746""",
    ),
    DhId.ECP_521: dict(
        i="""0037ADE9 319A89F4 DABDB3EF 411AACCC A5123C61 ACAB57B5 393DCE47 608172A0
             95AA85A3 0FE1C295 2C6771D9 37BA9777 F5957B26 39BAB072 462F68C2 7A57382D
             4A52""",
        gix="""0015417E 84DBF28C 0AD3C278 713349DC 7DF153C8 97A1891B D98BAB43 57C9ECBE
               E1E3BF42 E00B8E38 0AEAE57C 2D107564 94188594 2AF5A7F4 601723C4 195D176C
               ED3E""",
        giy="""017CAE20 B6641D2E EB695786 D8C94614 6239D099 E18E1D5A 514C739D 7CB4A10A
               D8A78801 5AC405D7 799DC75E 7B7D5B6C F2261A6A 7F150743 8BF01BEB 6CA3926F
               9582""",
        kei="""0000008C 00150000 0015417E 84DBF28C 0AD3C278 713349DC 7DF153C8 97A1891B
               D98BAB43 57C9ECBE E1E3BF42 E00B8E38 0AEAE57C 2D107564 94188594 2AF5A7F4
               601723C4 195D176C ED3E017C AE20B664 1D2EEB69 5786D8C9 46146239 D099E18E
               1D5A514C 739D7CB4 A10AD8A7 88015AC4 05D7799D C75E7B7D 5B6CF226 1A6A7F15
               07438BF0 1BEB6CA3 926F9582""",
        r="""0145BA99 A847AF43 793FDD0E 872E7CDF A16BE30F DC780F97 BCCC3F07 8380201E
             9C677D60 0B343757 A3BDBF2A 3163E4C2 F869CCA7 458AA4A4 EFFC311F 5CB15168
             5EB9""",
        grx="""00D0B397 5AC4B799 F5BEA16D 5E13E9AF 971D5E9B 984C9F39 728B5E57 39735A21
               9B97C356 436ADC6E 95BB0352 F6BE64A6 C2912D4E F2D0433C ED2B6171 640012D9
               460F""",
        gry="""015C6822 6383956E 3BD066E7 97B623C2 7CE0EAC2 F551A10C 2C724D98 52077B87
               220B6536 C5C408A1 D2AEBB8E 86D678AE 49CB5709 1F473229 6579AB44 FCD17F0F
               C56A""",
        ker="""0000008c 00150000 00D0B397 5AC4B799 F5BEA16D 5E13E9AF 971D5E9B 984C9F39
               728B5E57 39735A21 9B97C356 436ADC6E 95BB0352 F6BE64A6 C2912D4E F2D0433C
               ED2B6171 640012D9 460F015C 68226383 956E3BD0 66E797B6 23C27CE0 EAC2F551
               A10C2C72 4D985207 7B87220B 6536C5C4 08A1D2AE BB8E86D6 78AE49CB 57091F47
               32296579 AB44FCD1 7F0FC56A""",
        girx="""01144C7D 79AE6956 BC8EDB8E 7C787C45 21CB086F A64407F9 7894E5E6 B2D79B04
                D1427E73 CA4BAA24 0A347868 59810C06 B3C715A3 A8CC3151 F2BEE417 996D19F3
                DDEA""",
    ),
}


@pytest.mark.parametrize("group", list(RFC5903), ids=lambda g: f"RFC5903-{DhId.name_of(g)}")
def test_rfc5903_ecp_known_answer(group: DhId) -> None:
    """RFC 5903 section 8: public values, KE payload data and g^ir (x coordinate only)."""
    v = RFC5903[group]
    initiator = dh_from_private(group, h(v["i"]))
    responder = dh_from_private(group, h(v["r"]))
    assert initiator.public_bytes == h(v["gix"]) + h(v["giy"])
    assert responder.public_bytes == h(v["grx"]) + h(v["gry"])
    # The KE payloads of section 8 carry exactly our key exchange data after the
    # 4-octet generic header and the 4-octet group/reserved field.
    kei, ker = h(v["kei"]), h(v["ker"])
    assert int.from_bytes(kei[4:6], "big") == group
    assert kei[8:] == initiator.public_bytes
    assert ker[8:] == responder.public_bytes
    assert len(kei) - 8 == dh_public_length(group)
    assert initiator.shared(responder.public_bytes) == h(v["girx"])
    assert responder.shared(initiator.public_bytes) == h(v["girx"])


# --------------------------------------------------------------------------- RFC 7748 X25519

# RFC 7748 section 5.2: X25519(scalar, u-coordinate) test vectors.
X25519_FUNCTION_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        # Its u-coordinate has the top bit set, which X25519 must mask.
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]


@pytest.mark.parametrize(("scalar", "u", "out"), X25519_FUNCTION_VECTORS)
def test_rfc7748_x25519_function(scalar: str, u: str, out: str) -> None:
    """RFC 7748 section 5.2, through the group-31 KE path."""
    assert dh_from_private(DhId.CURVE25519, h(scalar)).shared(h(u)) == h(out)


def test_rfc7748_x25519_iterated() -> None:
    """RFC 7748 section 5.2: k = u = 9, then k, u = X25519(k, u), k; after 1 and 1000 rounds."""
    k = u = bytes([9]) + bytes(31)
    for round_ in range(1, 1001):
        k, u = dh_from_private(DhId.CURVE25519, k).shared(u), k
        if round_ == 1:
            assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_rfc7748_x25519_diffie_hellman() -> None:
    """RFC 7748 section 6.1: Alice and Bob's public keys and shared secret."""
    alice = dh_from_private(
        DhId.CURVE25519, h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = dh_from_private(
        DhId.CURVE25519, h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public_bytes == h(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert bob.public_bytes == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.shared(bob.public_bytes) == shared
    assert bob.shared(alice.public_bytes) == shared


# --------------------------------------------------------------------------- RFC 4754 ECDSA

# RFC 4754 section 8.1 / 8.2 / 8.3: private key w, public key (gwx, gwy), and the
# signature r | s over the message "abc", whose hash H the RFC also lists.
RFC4754 = {
    AuthMethod.ECDSA_SHA256_P256: dict(
        curve=ec.SECP256R1(),
        w="DC51D3866A15BACDE33D96F992FCA99DA7E6EF0934E7097559C27F1614C88A7F",
        gwx="2442A5CC0ECD015FA3CA31DC8E2BBC70BF42D60CBCA20085E0822CB04235E970",
        gwy="6FC98BD7E50211A4A27102FA3549DF79EBCB4BF246B80945CDDFE7D509BBFD7D",
        hash="BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
        r="CB28E0999B9C7715FD0A80D8E47A77079716CBBF917DD72E97566EA1C066957C",
        s="86FA3BB4E26CAD5BF90B7F81899256CE7594BB1EA0C89212748BFF3B3D5B0315",
    ),
    AuthMethod.ECDSA_SHA384_P384: dict(
        curve=ec.SECP384R1(),
        w="0BEB646634BA87735D77AE4809A0EBEA865535DE4C1E1DCB"
        "692E84708E81A5AF62E528C38B2A81B35309668D73524D9F",
        gwx="96281BF8DD5E0525CA049C048D345D3082968D10FEDF5C5A"
        "CA0C64E6465A97EA5CE10C9DFEC21797415710721F437922",
        gwy="447688BA94708EB6E2E4D59F6AB6D7EDFF9301D249FE49C3"
        "3096655F5D502FAD3D383B91C5E7EDAA2B714CC99D5743CA",
        hash="CB00753F45A35E8BB5A03D699AC65007272C32AB0EDED163"
        "1A8B605A43FF5BED8086072BA1E7CC2358BAECA134C825A7",
        r="FB017B914E29149432D8BAC29A514640B46F53DDAB2C6994"
        "8084E2930F1C8F7E08E07C9C63F2D21A07DCB56A6AF56EB3",
        s="B263A1305E057F984D38726A1B46874109F417BCA112674C"
        "528262A40A629AF1CBB9F516CE0FA7D2FF630863A00E8B9F",
    ),
    AuthMethod.ECDSA_SHA512_P521: dict(
        curve=ec.SECP521R1(),
        w="0065FDA3409451DCAB0A0EAD45495112A3D813C17BFD34BDF8C1209D7DF58491"
        "20597779060A7FF9D704ADF78B570FFAD6F062E95C7E0C5D5481C5B153B48B375FA1",
        gwx="0151518F1AF0F563517EDD5485190DF95A4BF57B5CBA4CF2A9A3F6474725A35F"
        "7AFE0A6DDEB8BEDBCD6A197E592D40188901CECD650699C9B5E456AEA5ADD19052A8",
        gwy="006F3B142EA1BFFF7E2837AD44C9E4FF6D2D34C73184BBAD90026DD5E6E85317"
        "D9DF45CAD7803C6C20035B2F3FF63AFF4E1BA64D1C077577DA3F4286C58F0AEAE643",
        hash="DDAF35A193617ABACC417349AE20413112E6FA4E89A97EA20A9EEEE64B55D39A"
        "2192992A274FC1A836BA3C23A3FEEBBD454D4423643CE80E2A9AC94FA54CA49F",
        r="0154FD3836AF92D0DCA57DD5341D3053988534FDE8318FC6AAAAB68E2E6F4339"
        "B19F2F281A7E0B22C269D93CF8794A9278880ED7DBB8D9362CAEACEE544320552251",
        s="017705A7030290D1CEB605A9A1BB03FF9CDD521E87A696EC926C8C10C8362DF4"
        "975367101F67D1CF9BCCBF2F3D239534FA509E70AAC851AE01AAC68D62F866472660",
    ),
}
_HASHLIB = {
    AuthMethod.ECDSA_SHA256_P256: hashlib.sha256,
    AuthMethod.ECDSA_SHA384_P384: hashlib.sha384,
    AuthMethod.ECDSA_SHA512_P521: hashlib.sha512,
}


@pytest.mark.parametrize("method", list(RFC4754), ids=lambda m: f"RFC4754-method{int(m)}")
def test_rfc4754_ecdsa_known_answer(method: AuthMethod) -> None:
    """RFC 4754 section 8: gw = w*G, and the RFC's r | s verifies over "abc"."""
    v = RFC4754[method]
    private = ec.derive_private_key(int.from_bytes(h(v["w"]), "big"), v["curve"])
    numbers = private.public_key().public_numbers()
    assert numbers.x == int.from_bytes(h(v["gwx"]), "big")
    assert numbers.y == int.from_bytes(h(v["gwy"]), "big")
    assert _HASHLIB[method](b"abc").digest() == h(v["hash"])

    public = ec.EllipticCurvePublicNumbers(numbers.x, numbers.y, v["curve"]).public_key()
    signature = h(v["r"]) + h(v["s"])
    verify_auth(method, public, b"abc", signature)  # raises on failure

    flipped = bytearray(signature)
    flipped[len(flipped) // 3] ^= 0x01
    with pytest.raises(AuthenticationError):
        verify_auth(method, public, b"abc", bytes(flipped))
    with pytest.raises(AuthenticationError):
        verify_auth(method, public, b"abd", signature)


# --------------------------------------------------------------------------- RFC 7427 / 8420

# RFC 7427 Appendix A.4.1-A.4.3: "ecdsa-with-sha256/384/512" AlgorithmIdentifier
# DER (parameters absent), 12 octets each.
RFC7427_A4 = {
    HashAlgorithm.SHA2_256: "30 0a 06 08 2a 86 48 ce 3d 04 03 02",
    HashAlgorithm.SHA2_384: "30 0a 06 08 2a 86 48 ce 3d 04 03 03",
    HashAlgorithm.SHA2_512: "30 0a 06 08 2a 86 48 ce 3d 04 03 04",
}


def test_rfc7427_algorithm_identifiers() -> None:
    assert set(ALGORITHM_IDENTIFIERS) == set(RFC7427_A4)
    for alg, expected in RFC7427_A4.items():
        assert ALGORITHM_IDENTIFIERS[alg] == h(expected)
        assert len(ALGORITHM_IDENTIFIERS[alg]) == 12


def test_ed25519_algorithm_identifier_matches_spki() -> None:
    """RFC 8420 2 uses id-Ed25519 (RFC 8410 3): the AlgorithmIdentifier that opens
    every Ed25519 SubjectPublicKeyInfo, as serialized by the cryptography library."""
    spki = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # SPKI = SEQUENCE (0x30, length) { AlgorithmIdentifier, BIT STRING }.
    assert spki[2 : 2 + len(ED25519_ALGORITHM_IDENTIFIER)] == ED25519_ALGORITHM_IDENTIFIER


# --------------------------------------------------------------------------- RFC 8439 / 7634

# RFC 8439 2.8.2: the AEAD_CHACHA20_POLY1305 example ("Ladies and Gentlemen ...").
RFC8439_282 = dict(
    key="""80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f
           90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f""",
    nonce="07 00 00 00 40 41 42 43 44 45 46 47",
    aad="50 51 52 53 c0 c1 c2 c3 c4 c5 c6 c7",
    ciphertext="""d3 1a 8d 34 64 8e 60 db 7b 86 af bc 53 ef 7e c2
                  a4 ad ed 51 29 6e 08 fe a9 e2 b5 a7 36 ee 62 d6
                  3d be a4 5e 8c a9 67 12 82 fa fb 69 da 92 72 8b
                  1a 71 de 0a 9e 06 0b 29 05 d6 a5 b6 7e cd 3b 36
                  92 dd bd 7f 2d 77 8b 8c 98 03 ae e3 28 09 1b 58
                  fa b3 24 e4 fa d6 75 94 55 85 80 8b 48 31 d7 bc
                  3f f4 de f0 8e 4b 7a 9d e5 76 d2 65 86 ce c6 4b
                  61 16""",
    tag="1a e1 0b 59 4f 09 e2 6a 7e 90 2e cb d0 60 06 91",
)
RFC8439_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)


def test_rfc8439_aead_through_the_algorithm_table() -> None:
    """The table's constructor for transform 28 is RFC 8439's AEAD."""
    row = algorithms.encr(EncrId.CHACHA20_POLY1305, None)
    assert row is not None and row.aead and row.ike and row.esp
    v = RFC8439_282
    aead = row.new_aead(h(v["key"]))
    sealed = aead.encrypt(h(v["nonce"]), RFC8439_PLAINTEXT, h(v["aad"]))
    assert sealed == h(v["ciphertext"]) + h(v["tag"])


# RFC 7634 Appendix B: an IKEv2 INFORMATIONAL request protected with ChaCha20-Poly1305.
RFC7634_B = dict(
    keymat="""80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f
              90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f a0 a1 a2 a3""",
    iv="10 11 12 13 14 15 16 17",
    # IKE header (SPIs c0.., d0.., next payload SK, version 2.0, INFORMATIONAL, message
    # ID 9, length 69) then the SK generic header (next payload Notify, length 41).
    aad="""c0 c1 c2 c3 c4 c5 c6 c7 d0 d1 d2 d3 d4 d5 d6 d7
           2e 20 25 00 00 00 00 09 00 00 00 45 29 00 00 29""",
    inner="00 00 00 0c 00 00 40 01 00 00 00 0a",  # a Notify payload (type 16385)
    sealed="""61 03 94 70 1f 8d 01 7f 7c 12 92 48 89 6b 71 bf e2 52 36 ef d7 cd c6 70
              66 90 63 15 b2""",  # ciphertext of inner | Pad Length 0, then the tag
)


def test_rfc7634_ikev2_example_seal_and_open() -> None:
    v = RFC7634_B
    cipher = SkCipher(EncrId.CHACHA20_POLY1305, 0, IntegId.NONE, h(v["keymat"]), b"")
    assert cipher.sealed_length(12) == 41 - 4  # SK payload length minus its header
    body = cipher.seal(h(v["aad"]), h(v["inner"]), iv=h(v["iv"]))
    assert body == h(v["iv"]) + h(v["sealed"])
    assert cipher.open(h(v["aad"]), body) == h(v["inner"])
