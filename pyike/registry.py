"""IANA protocol numbers used by IKEv2 and ESP.

Every number that appears on the wire has a name here, so the rest of pyike
never spells a bare integer. Source: the IANA "Internet Key Exchange Version 2
(IKEv2) Parameters" registry, RFC 7296 section 3, and the RFCs cited per enum.

Enums are IntEnum so that values compare and pack like ints; parsers use
``EnumClass.name_of(value)`` when printing a value that may be unregistered.
"""

from __future__ import annotations

from enum import IntEnum


class _Registry(IntEnum):
    @classmethod
    def name_of(cls, value: int) -> str:
        """Name for printing: the registered name, or ``<class>_<number>``."""
        try:
            return cls(value).name
        except ValueError:
            return f"{cls.__name__.upper()}_{value}"

    @classmethod
    def lookup(cls, value: int) -> int:
        """The enum member if registered, else the plain int (keeps unknowns)."""
        try:
            return cls(value)
        except ValueError:
            return value


class ExchangeType(_Registry):
    """RFC 7296 section 3.1."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_SESSION_RESUME = 38  # RFC 5723
    IKE_INTERMEDIATE = 43  # RFC 9242


class HeaderFlag(_Registry):
    """IKE header flags octet (RFC 7296 section 3.1)."""

    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(_Registry):
    """Next Payload values (RFC 7296 section 3.2, RFC 7383)."""

    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53  # RFC 7383


class ProtocolId(_Registry):
    """Security Protocol Identifier (RFC 7296 section 3.3.1)."""

    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(_Registry):
    """RFC 7296 section 3.3.2."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class EncrId(_Registry):
    """Transform type 1 IDs (RFC 7296, RFC 4106/5282)."""

    DES_IV64 = 1
    DES = 2
    DES3 = 3
    NULL = 11
    AES_CBC = 12
    AES_CTR = 13
    AES_CCM_8 = 14
    AES_CCM_12 = 15
    AES_CCM_16 = 16
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    NULL_AUTH_AES_GMAC = 21
    CHACHA20_POLY1305 = 28


class PrfId(_Registry):
    """Transform type 2 IDs (RFC 7296, RFC 4868)."""

    HMAC_MD5 = 1
    HMAC_SHA1 = 2
    AES128_XCBC = 4
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7
    AES128_CMAC = 8


class IntegId(_Registry):
    """Transform type 3 IDs (RFC 7296, RFC 4868)."""

    NONE = 0
    HMAC_MD5_96 = 1
    HMAC_SHA1_96 = 2
    AES_XCBC_96 = 5
    HMAC_SHA1_160 = 7
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhId(_Registry):
    """Transform type 4 IDs: Diffie-Hellman groups (RFC 7296, 3526, 5903, 8031)."""

    NONE = 0
    MODP_768 = 1
    MODP_1024 = 2
    MODP_1536 = 5
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    MODP_6144 = 17
    MODP_8192 = 18
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31
    CURVE448 = 32


class EsnId(_Registry):
    """Transform type 5 IDs (RFC 7296 section 3.3.2)."""

    NO_ESN = 0
    ESN = 1


class TransformAttr(_Registry):
    """Transform attribute types (RFC 7296 section 3.3.5)."""

    KEY_LENGTH = 14


class IdType(_Registry):
    """Identification payload ID Type (RFC 7296 section 3.5)."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11
    ID_NULL = 13  # RFC 7619


class CertEncoding(_Registry):
    """CERT/CERTREQ encodings (RFC 7296 section 3.6, RFC 7670)."""

    PKCS7_X509 = 1
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIGNATURE = 4
    KERBEROS_TOKEN = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10
    RAW_RSA_KEY = 11
    HASH_URL_X509 = 12
    HASH_URL_BUNDLE = 13
    OCSP_CONTENT = 14
    RAW_PUBLIC_KEY = 15  # RFC 7670
    # OpenIKED's private encoding: a DER SubjectPublicKeyInfo sent in CERT,
    # and an empty CERTREQ asking for it (iked's IKEV2_CERT_BARE_PUBKEY).
    IKED_BARE_PUBKEY = 201


class AuthMethod(_Registry):
    """AUTH payload methods (RFC 7296 section 3.8, RFC 4754, RFC 7427)."""

    RSA_SIG = 1
    PSK = 2  # "Shared Key Message Integrity Code"
    DSS_SIG = 3
    ECDSA_SHA256_P256 = 9  # RFC 4754
    ECDSA_SHA384_P384 = 10  # RFC 4754
    ECDSA_SHA512_P521 = 11  # RFC 4754
    GENERIC_SECURE_PASSWORD = 12
    NULL_AUTH = 13  # RFC 7619
    DIGITAL_SIGNATURE = 14  # RFC 7427


class HashAlgorithm(_Registry):
    """SIGNATURE_HASH_ALGORITHMS notify values (RFC 7427 section 4)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class TsType(_Registry):
    """Traffic selector types (RFC 7296 section 3.13.1)."""

    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


class CfgType(_Registry):
    """Configuration payload CFG Type (RFC 7296 section 3.15)."""

    CFG_REQUEST = 1
    CFG_REPLY = 2
    CFG_SET = 3
    CFG_ACK = 4


class CfgAttr(_Registry):
    """Configuration attribute types (RFC 7296 section 3.15.1)."""

    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15


class NotifyType(_Registry):
    """Notify Message Types (RFC 7296 section 3.10.1 and later RFCs).

    Values below 16384 are errors; 16384 and above are status types.
    """

    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44

    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    ADDITIONAL_IP4_ADDRESS = 16397
    ADDITIONAL_IP6_ADDRESS = 16398
    NO_ADDITIONAL_ADDRESSES = 16399
    UPDATE_SA_ADDRESSES = 16400
    COOKIE2 = 16401
    NO_NATS_ALLOWED = 16402
    AUTH_LIFETIME = 16403
    MULTIPLE_AUTH_SUPPORTED = 16404
    ANOTHER_AUTH_FOLLOWS = 16405
    REDIRECT_SUPPORTED = 16406
    REDIRECT = 16407
    REDIRECTED_FROM = 16408
    TICKET_LT_OPAQUE = 16409
    TICKET_REQUEST = 16410
    TICKET_ACK = 16411
    TICKET_NACK = 16412
    TICKET_OPAQUE = 16413
    LINK_ID = 16414
    USE_WESP_MODE = 16415
    ROHC_SUPPORTED = 16416
    EAP_ONLY_AUTHENTICATION = 16417
    CHILDLESS_IKEV2_SUPPORTED = 16418
    QUICK_CRASH_DETECTION = 16419
    IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420
    IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED = 16421
    IKEV2_MESSAGE_ID_SYNC = 16422
    IPSEC_REPLAY_COUNTER_SYNC = 16423
    SECURE_PASSWORD_METHODS = 16424
    PSK_PERSIST = 16425
    PSK_CONFIRM = 16426
    ERX_SUPPORTED = 16427
    IFOM_CAPABILITY = 16428
    SENDER_REQUEST_ID = 16429
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427
    CLONE_IKE_SA_SUPPORTED = 16432
    CLONE_IKE_SA = 16433
    PUZZLE = 16434
    USE_PPK = 16435
    PPK_IDENTITY = 16436
    NO_PPK_AUTH = 16437
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438
    IP4_ALLOWED = 16439
    IP6_ALLOWED = 16440

    @property
    def is_error(self) -> bool:
        return self.value < 16384


# ESP "next header" values we carry (IANA protocol numbers).
class IpProto(_Registry):
    ANY = 0
    ICMP = 1
    IPV4 = 4
    TCP = 6
    UDP = 17
    IPV6 = 41
    ESP = 50
    ICMPV6 = 58
    NO_NEXT = 59
