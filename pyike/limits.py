"""Every resource limit of the daemon, with its default, in one place.

A home box's UDP 500/4500 is reachable by anyone: each limit bounds what an
unauthenticated sender (or a misbehaving authenticated peer) can make pyike hold or do.
Hitting a limit is counted (``pyikectl show stats``) and logged at most once a minute per
kind; it never raises. ``pyike --limit NAME=VALUE`` overrides one (repeatable); docs/
security.md explains each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    # IKE SAs (RFC 7296 2.6 cookies; the half-open table is what a spoofed flood fills).
    ike_sas: int = 10_000  # IKE SAs in all states; a new IKE_SA_INIT beyond is dropped
    ike_sas_per_peer: int = 4  # established IKE SAs per peer identity; the oldest goes
    half_open: int = 256  # responder SAs waiting for IKE_AUTH; the oldest goes
    cookie_threshold: int = 16  # half-open SAs from which a COOKIE is demanded (2.6)
    half_open_timeout: float = 30.0  # seconds a half-open SA waits for IKE_AUTH
    # COOKIE answers per second per source address, like DNS response rate limiting:
    # a real initiator needs one per attempt; a flood from a few addresses gets no more.
    cookies_per_source_per_s: float = 2.0
    cookie_burst: int = 4
    child_sas_per_ike_sa: int = 64  # CREATE_CHILD_SA beyond: NO_ADDITIONAL_SAS (3.10.1)
    # Signature checks are the expensive step of IKE_AUTH: a token bucket per source.
    auth_per_source_per_s: float = 4.0  # IKE_AUTH verifications per second per address
    auth_burst: int = 8
    # IKE fragmentation (RFC 7383): what one message's reassembly may hold.
    fragments_per_message: int = 64
    reassembly_bytes: int = 64 * 1024
    # Control socket (pyikectl).
    control_clients: int = 16  # connections at once, monitors included
    control_request_bytes: int = 1024  # one request line (the longest valid is far shorter)
    # Logging: at most this many lines per kind of repeated event per minute.
    log_repeats_per_minute: int = 1

    def with_overrides(self, items: list[str]) -> Limits:
        """``["half_open=64", ...]`` applied; ValueError names a bad item."""
        changes: dict[str, int | float] = {}
        fields = {f.name: f for f in dataclasses.fields(self)}
        for item in items:
            name, sep, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in fields:
                known = ", ".join(sorted(fields))
                raise ValueError(f"unknown limit {item!r} (NAME=VALUE, NAME one of: {known})")
            kind = type(getattr(self, name))
            try:
                number = kind(value.strip())
            except ValueError:
                what = "whole number" if kind is int else "number"
                raise ValueError(f"limit {name}: {value!r} is not a {what}") from None
            if number <= 0:
                raise ValueError(f"limit {name}: must be positive, not {value.strip()}")
            changes[name] = number
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


DEFAULT_LIMITS = Limits()
