"""Command line: ``pyike`` (the daemon, flags as in iked(8)) and its tools.

    pyike [-dnStv] [-D macro=value] [-f file] [--keydir dir] [--active] ...
    pyike keygen [--keydir dir] [--type rsa|p256|p384|p521] [--force]
    pyike ca [--cadir dir] NAME create|install|export|certificate HOST ...
    pyike decode FILE [--keylog FILE|DIR] [--hex] [--ladder] [--svg OUT] [--html OUT]
    pyike demo

Errors are one line on stderr and exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from pyike import __version__

SUBCOMMANDS = ("keygen", "ca", "decode", "demo")


def _daemon_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyike",
        description="Userspace IKEv2/ESP tunnel that reads OpenBSD iked.conf. "
        f"Tools: pyike {{{','.join(SUBCOMMANDS)}}} --help.",
        epilog="pyike runs in the foreground (use a service manager to daemonise).",
    )
    p.add_argument(
        "-f",
        dest="file",
        type=Path,
        default=Path("/etc/iked.conf"),
        help="configuration file (default: /etc/iked.conf)",
    )
    p.add_argument(
        "-n",
        dest="check",
        action="store_true",
        help="check the configuration, print the expanded policies, and exit",
    )
    p.add_argument(
        "-D",
        dest="macros",
        action="append",
        default=[],
        metavar="macro=value",
        help="define a macro, overriding the file's",
    )
    p.add_argument(
        "-d",
        dest="debug",
        action="store_true",
        help="log to stderr (always the case; accepted for iked compatibility)",
    )
    p.add_argument(
        "-v",
        dest="verbose",
        action="count",
        default=0,
        help="more logging; repeat for more (-vv: every message, -vvv: payloads)",
    )
    p.add_argument(
        "-t",
        dest="natt",
        action="store_true",
        help="like iked -t: start IKE on UDP 4500 (non-ESP marker) and always "
        "encapsulate ESP in UDP",
    )
    p.add_argument(
        "-T",
        dest="no_natt",
        action="store_true",
        help="accepted for iked compatibility; pyike's ESP always runs over UDP",
    )
    p.add_argument(
        "-s",
        dest="socket",
        type=Path,
        default=None,
        help="control socket for pyikectl (default: /run/pyike.sock; root's, mode 0600)",
    )
    p.add_argument(
        "--socket-group",
        default=None,
        metavar="GROUP",
        help="let GROUP use the control socket too (mode 0660)",
    )
    p.add_argument(
        "--keydir",
        type=Path,
        default=Path("/etc/iked"),
        help="key directory in iked's layout (default: /etc/iked)",
    )
    p.add_argument("--active", action="store_true", help="make every policy active")
    p.add_argument(
        "--keylog",
        type=Path,
        default=None,
        metavar="DIR",
        help="write SA keys (SECRET) as Wireshark tables into DIR",
    )
    p.add_argument(
        "--no-rfc7427",
        dest="rfc7427",
        action="store_false",
        help="do not offer RFC 7427 signatures (no SIGNATURE_HASH_ALGORITHMS "
        "notify): AUTH uses the RFC 4754 ECDSA methods, and so does the peer",
    )
    p.add_argument(
        "--natt-keepalive",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="NAT keepalive interval on tunnels we started (default 20; 0 = off)",
    )
    p.add_argument(
        "--dpd",
        type=float,
        default=None,
        metavar="SECONDS",
        help="probe an idle IKE SA after this many seconds without anything "
        "received (default: `set dpd_check_interval` if not iked's 60, "
        "else 5; 0 = never)",
    )
    p.add_argument(
        "--retransmit-cap",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="longest wait between IKE retransmissions, which go on for about "
        "60 s (default 5; 0 = iked's 2/4/8/16/32 s)",
    )
    p.add_argument(
        "--no-netwatch", action="store_true", help="do not react to link, address and route changes"
    )
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a resource limit, e.g. --limit half_open=64 (repeatable; the limits "
        "and their defaults are in docs/security.md)",
    )
    p.add_argument(
        "--replace-after",
        type=float,
        default=4.0,
        metavar="SECONDS",
        help="negotiate a replacement for an IKE SA whose liveness probe is "
        "unanswered this long (default 4; 0 = never)",
    )
    p.add_argument(
        "--user",
        default=None,
        metavar="NAME",
        help="run the network process as this user (default: _pyike if it exists, "
        "else nobody); a small root process keeps only route, socket and key work",
    )
    p.add_argument(
        "--no-privsep",
        action="store_true",
        help="run as one root process (no privilege separation; for comparisons)",
    )
    p.add_argument(
        "--fragment-size",
        type=int,
        default=0,
        metavar="BYTES",
        help="with `set fragmentation`: largest IP datagram of an IKE message before it "
        "is sent as RFC 7383 fragments (default 0: 1280 for IPv6, 576 for IPv4)",
    )
    p.add_argument("--no-invalid-spi", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ports", default="500,4500", metavar="IKE,NATT", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"pyike {__version__}")
    return p


def setup_logging(verbose: int) -> None:
    from pyike import logs

    logs.setup(verbose)


def _macros(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"pyike: -D wants macro=value, got {item!r}")
        out[name] = value
    return out


def run_daemon(argv: list[str]) -> int:
    args = _daemon_parser().parse_args(argv)
    setup_logging(args.verbose)
    from pyike import config as cfg
    from pyike.daemon import Daemon, DaemonError, Options

    macros = _macros(args.macros)
    from pyike.limits import DEFAULT_LIMITS

    try:
        limits = DEFAULT_LIMITS.with_overrides(args.limit)
    except ValueError as e:
        print(f"pyike: --limit: {e}", file=sys.stderr)
        return 1
    if args.check:
        try:
            conf = cfg.load_config(args.file, macros, refuse_loose_permissions=True)
        except cfg.ConfigError as e:
            print(f"pyike: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"pyike: {args.file}: {e.strerror}", file=sys.stderr)
            return 1
        for p in conf.policies:
            if args.active:
                p.active = True
            print(cfg.format_policy(p))
        for w in cfg.check_policies(conf):
            print(f"pyike: warning: {w}", file=sys.stderr)
        from pyike.authn import check_keydir

        for w in check_keydir(args.keydir, [p for p in conf.policies if not p.skip]):
            print(f"pyike: warning: {w}", file=sys.stderr)
        print("configuration OK", file=sys.stderr)
        return 0
    try:
        ports = tuple(int(x) for x in args.ports.split(","))
        assert len(ports) == 2
    except (ValueError, AssertionError):
        print("pyike: --ports wants IKE,NATT", file=sys.stderr)
        return 1
    options = Options(
        config_file=args.file,
        macros=macros,
        keydir=args.keydir,
        force_active=args.active,
        force_encap=args.natt,
        keylog_dir=args.keylog,
        ports=ports,  # type: ignore[arg-type]
        natt_keepalive=args.natt_keepalive,
        rfc7427=args.rfc7427,
        dpd_interval=args.dpd,
        retransmit_cap=args.retransmit_cap,
        netwatch=not args.no_netwatch,
        replace_after=args.replace_after,
        invalid_spi=not args.no_invalid_spi,
        fragment_size=args.fragment_size,
        limits=limits,
    )
    from pyike import control
    from pyike.dataplane import attach_dataplane
    from pyike.privsep.drop import PrivsepError
    from pyike.service import Service

    if not args.no_privsep:  # not root, or no such user: say so before opening anything
        from pyike.privsep.start import preflight

        try:
            preflight(args.user)
        except PrivsepError as e:
            print(f"pyike: {e}", file=sys.stderr)
            return 1
    # The control socket is made here, with privileges (root's, 0600), and then only
    # served by the daemon's event loop (pyike.control). The default path is shared by
    # every pyike on the host: if another one holds it, this one runs without.
    ctl_sock = None
    path = args.socket or control.DEFAULT_SOCKET
    try:
        ctl_sock = control.bind_control_socket(path, args.socket_group)
    except control.ControlError as e:
        if args.socket is not None:
            print(f"pyike: {e}", file=sys.stderr)
            return 1
        logging.getLogger("pyike").warning("no control socket: %s", e)
    options.socket_path = ctl_sock.path if ctl_sock is not None else None
    daemon = Daemon(options)
    attach_dataplane(daemon)
    gid = None
    if ctl_sock is not None and args.socket_group is not None:
        import grp

        gid = grp.getgrnam(args.socket_group).gr_gid
    # Hooks itself into the daemon: serves the socket and notifies systemd from the
    # daemon's event loop once it has started.
    service = Service(daemon, ctl_sock, allowed_gid=gid)
    try:
        try:
            if args.no_privsep:
                asyncio.run(daemon.run())
            else:
                from pyike.privsep.start import run_separated

                # The unprivileged process serves the control socket; the root
                # parent closes its copy (and removes the path at exit, below).
                handover = [ctl_sock.sock] if ctl_sock is not None else []
                return run_separated(daemon, args.user, handover=handover)
        finally:
            service.close()
    except (DaemonError, PrivsepError) as e:
        print(f"pyike: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(
            f"pyike: {e} (pyike needs root for ports 500/4500 and the TUN device)", file=sys.stderr
        )
        return 1
    except OSError as e:
        print(f"pyike: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one line for the user, the traceback with -vv
        logging.getLogger("pyike").debug("internal error", exc_info=True)
        print(f"pyike: internal error: {e!r} (run with -vv for the traceback)", file=sys.stderr)
        return 70
    finally:
        if ctl_sock is not None:
            ctl_sock.close()
    return 0


def run_keygen(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="pyike keygen",
        description="Create a key pair in iked's layout (private/local.key and local.pub).",
    )
    p.add_argument("--keydir", type=Path, default=Path("/etc/iked"))
    p.add_argument(
        "--type",
        dest="key_type",
        default=None,
        choices=["rsa", "p256", "p384", "p521"],
        help="key type (default p384); rsa is RSA-2048 unless --bits says otherwise",
    )
    p.add_argument("--bits", type=int, default=2048, help="RSA key size (at least 2048)")
    p.add_argument("--curve", default="secp384r1", choices=["secp256r1", "secp384r1", "secp521r1"])
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    args = p.parse_args(argv)
    from pyike import keys

    try:
        written = keys.keygen(
            args.keydir, args.curve, args.force, key_type=args.key_type, rsa_bits=args.bits
        )
    except (keys.KeyFileError, ValueError) as e:
        print(f"pyike keygen: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    print(
        "Give local.pub to your peer as pubkeys/fqdn/<your srcid> in its key directory.",
        file=sys.stderr,
    )
    return 0


CA_USAGE = """\
pyike ca [--cadir /etc/ssl] [--type rsa|p256|p384|p521] NAME COMMAND ...
  NAME create [password PASSWORD]        a new CA in CADIR/NAME (as ikectl ca NAME create)
  NAME install [KEYDIR]                  ca/ca.crt and crls/ca.crl into KEYDIR (/etc/iked)
  NAME export                            ca.tgz here: the CA certificate and CRL
  NAME certificate HOST create [--days N] [server|client]
                                         key and certificate for HOST (an FQDN, an IP
                                         address or user@domain: its subjectAltName)
  NAME certificate HOST install [KEYDIR] private/local.key, local.pub, certs/HOST.crt
  NAME certificate HOST export           HOST.tgz here, for tar -C /etc/iked -xzpf
  NAME certificate HOST revoke           revoke it and re-issue ca.crl"""


def run_ca(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pyike ca", usage=CA_USAGE, add_help=True)
    p.add_argument("--cadir", type=Path, default=Path("/etc/ssl"))
    p.add_argument(
        "--type", dest="key_type", default="rsa", choices=["rsa", "p256", "p384", "p521"]
    )
    p.add_argument("--days", type=int, default=365)
    p.add_argument("words", nargs="+")
    args = p.parse_args(argv)
    from pyike.ca import Ca, CaError

    w = args.words
    ca = Ca(w[0], args.cadir)
    try:
        match w[1:]:
            case ["create", *rest]:
                password = rest[1] if len(rest) == 2 and rest[0] == "password" else None
                if rest and password is None:
                    p.error(f"unexpected {' '.join(rest)!r} after create")
                print(ca.create(password=password, key_type=args.key_type))
            case ["install", *rest] if len(rest) <= 1:
                for path in ca.install(Path(rest[0]) if rest else Path("/etc/iked")):
                    print(path)
            case ["export"]:
                print(ca.export(None))
            case ["certificate", host, "create", *rest] if rest in ([], ["server"], ["client"]):
                usage = rest[0] if rest else "both"
                print(ca.certificate(host, days=args.days, key_type=args.key_type, usage=usage))
            case ["certificate", host, "install", *rest] if len(rest) <= 1:
                for path in ca.install_host(host, Path(rest[0]) if rest else Path("/etc/iked")):
                    print(path)
            case ["certificate", host, "export"]:
                print(ca.export(host))
            case ["certificate", host, "revoke"]:
                print(ca.revoke(host))
            case _:
                p.error(f"unknown command: {' '.join(w)}")
    except (CaError, OSError) as e:
        print(f"pyike ca: {e}", file=sys.stderr)
        return 1
    return 0


def run_decode(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="pyike decode",
        description="Print the IKE messages of a pcap/pcapng capture (or hex) as payload "
        "trees, or as the ladder diagram of RFC 7296 section 1.2 (--ladder, --svg, "
        "--html); decrypt SK payloads with a key log.",
    )
    p.add_argument("file", type=Path, help="capture file, or a hex file with --hex ('-' = stdin)")
    p.add_argument(
        "--keylog",
        type=Path,
        default=None,
        metavar="FILE|DIR",
        help="ikev2_decryption_table file, or the directory pyike --keylog wrote",
    )
    p.add_argument("--hex", action="store_true", help="input is hex, one message per line")
    p.add_argument(
        "--ladder",
        action="store_true",
        help="print each message as an arrow in RFC 7296 notation (HDR, SAi1, KEi, Ni  -->)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        metavar="COLUMNS",
        help="wrap --ladder lines at this width (default 100; 0 = never wrap)",
    )
    p.add_argument("--svg", type=Path, default=None, metavar="OUT", help="write the ladder as SVG")
    p.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="OUT",
        help="write the ladder as an HTML page with expandable payload trees",
    )
    p.add_argument(
        "--title", default=None, help="heading of the --svg/--html drawing (default: the file name)"
    )
    args = p.parse_args(argv)
    from pyike import decode, keylog, ladder, pcap

    text = ""
    count = 0
    try:
        if args.keylog is not None:
            path = args.keylog
            if path.is_dir():
                path = path / keylog.IKE_TABLE_NAME
            text = path.read_text()
        if args.hex:
            data = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
            items = decode.decode_hex(data, text)
        else:
            items = decode.decode_capture(args.file, text)
        drawings = args.svg is not None or args.html is not None
        decoded: list[decode.Decoded] = []  # kept for --svg/--html
        seen = [0]

        def kept() -> Iterator[decode.Decoded]:
            for item in items:
                seen[0] += 1
                if drawings:
                    decoded.append(item)
                yield item

        if args.ladder:
            width = ladder.DEFAULT_WIDTH if args.width is None else args.width
            for line in ladder.render_text(kept(), width):
                print(line)
        elif drawings:
            for _ in kept():
                pass
        else:
            for item in kept():
                print(item.render())
        count = seen[0]
        if drawings and count:
            from pyike import ladder_svg

            steps = ladder_svg.steps_of(decoded)
            title = args.file.name if args.title is None else args.title
            if args.svg is not None:
                args.svg.write_text(ladder_svg.render_svg(steps, title=title))
            if args.html is not None:
                args.html.write_text(ladder_svg.render_html(steps, title=title))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``pyike decode x | head``): stop quietly, as cat does.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail too.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a C tool here
    except (OSError, pcap.CaptureError, pcap.HexError, keylog.KeylogError) as e:
        print(f"pyike decode: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: one line, never a traceback (the output so far stands)
        print(f"pyike decode: internal error: {e!r}", file=sys.stderr)
        return 70
    if count == 0:
        print("pyike decode: no IKE messages found", file=sys.stderr)
        return 1
    return 0


def run_demo(argv: list[str]) -> int:
    from pyike.demo import main as demo_main

    return demo_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        cmd, rest = argv[0], argv[1:]
        commands = {"keygen": run_keygen, "ca": run_ca, "decode": run_decode, "demo": run_demo}
        return commands[cmd](rest)
    return run_daemon(argv)


def ctl_main(argv: list[str] | None = None) -> int:
    from pyike.ctl import main as ctl

    return ctl(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
