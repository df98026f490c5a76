"""Privilege separation: a small root parent, an unprivileged network process.

In the spirit of OpenBSD iked (proc.c/parent.c): the process that receives and
parses anything from the network (IKE on UDP 500/4500, ESP, netlink change
notifications) runs as an unprivileged user with no capabilities and cannot
read the private key file; the parent keeps root, parses nothing from the
network, and does the few privileged things on request over a socketpair:

- ``requests``: the typed request set, its wire format and the pure parser
  (bytes + policy -> request or refusal) the parent runs on every message;
- ``drop``: the user to run as, and the drop (setgroups, setgid, setuid,
  no_new_privs) with its verification (CapEff 0 in /proc/self/status);
- ``parent``: the privileged side's loop (validate, execute, answer; refuse,
  log and ignore anything else) and signal forwarding;
- ``child``: the unprivileged side's client (requests, peer keys and reloads
  through the parent);
- ``start``: start-up as root, fork, drop, run.

Unlike iked there is no separate process per concern: the data plane's hot path
(TUN fd and UDP sockets) lives in the unprivileged process next to IKE, so a
packet costs no extra copy or process hop.
"""
