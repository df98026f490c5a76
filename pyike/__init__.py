"""pyike: a pure-Python userspace IKEv2/ESP tunnel.

Where things live:
  registry  IANA protocol numbers (enums)
  wire      IKEv2 message and payload parsing/building (RFC 7296 section 3)
  crypto    PRFs, key derivation, Diffie-Hellman, SK payload protection, AUTH
  keys      iked-layout key files (local.key, pubkeys/fqdn/<id>)
  config    iked.conf parser and policies
  ike       the sans-IO IKE SA state machine
  esp       the sans-IO ESP codec (RFC 4303) and anti-replay window
  driver    sockets, TUN, routes, timers, signals
  decode    pcap/hex reader that prints IKE messages as payload trees
  cli       command line
"""

__version__ = "0.1.0"
