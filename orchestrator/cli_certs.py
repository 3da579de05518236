"""`splitnn certs init / issue`: a small CA and one certificate per host, for mutual TLS.

    splitnn certs init --dir certs
    splitnn certs issue alice --dir certs --dns alice.example.net
    splitnn certs issue orchestrator --dir certs

Also the security options of `splitnn train` (`add_security_arguments`,
`security_from_args`). The main CLI calls :func:`register` with its subparsers.
"""

from __future__ import annotations

import argparse
import sys

PROG = "splitnn certs"


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``certs`` (with ``init`` and ``issue``) to the main CLI's subparsers."""
    from splitnn.security.certs import CA_DAYS, HOST_DAYS

    certs = subparsers.add_parser(
        "certs", help="make a CA and per-host certificates for mutual TLS"
    )
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)

    p = certs_sub.add_parser(
        "init",
        help="make a CA: DIR/ca.pem and DIR/ca.key",
        description="Make a certificate authority (EC P-256, self-signed) in DIR. Keep "
        "ca.key private; ca.pem goes to every worker and the orchestrator.",
    )
    p.add_argument("--dir", required=True, help="directory for ca.pem and ca.key")
    p.add_argument("--days", type=int, default=CA_DAYS, help=f"validity (default {CA_DAYS})")
    p.add_argument("--name", default="splitnn CA", help="the CA's common name")
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.set_defaults(func=run_certs)

    p = certs_sub.add_parser(
        "issue",
        help="make DIR/NAME.pem and DIR/NAME.key signed by the CA in DIR",
        description="Issue a key and certificate for host NAME (a worker, or the "
        "orchestrator), good for TLS server and client authentication. It names NAME, "
        "every --dns and --ip, and localhost and 127.0.0.1 unless --no-loopback.",
    )
    p.add_argument("name", metavar="NAME", help="host name as in the config, e.g. alice")
    p.add_argument("--dir", required=True, help="directory holding the CA (from certs init)")
    p.add_argument("--dns", action="append", default=[], help="another DNS name; repeatable")
    p.add_argument("--ip", action="append", default=[], help="an IP address; repeatable")
    p.add_argument("--no-loopback", action="store_true", help="do not add localhost and 127.0.0.1")
    p.add_argument("--days", type=int, default=HOST_DAYS, help=f"validity (default {HOST_DAYS})")
    p.add_argument("--force", action="store_true", help="replace existing files for NAME")
    p.set_defaults(func=run_certs)
    return certs


def run_certs(args) -> int:
    """Run ``certs init`` or ``certs issue``. Errors: message on stderr, exit 2."""
    from splitnn.security import certs

    try:
        if args.certs_command == "init":
            cert, key = certs.init_ca(args.dir, args.name, days=args.days, force=args.force)
            print(f"wrote {cert} and {key} (keep {key} private)")
        else:
            issued = certs.issue(
                args.dir,
                args.name,
                dns=args.dns,
                ips=args.ip,
                loopback=not args.no_loopback,
                days=args.days,
                force=args.force,
            )
            names = ", ".join([*issued.dns, *issued.ips])
            print(f"wrote {issued.cert} and {issued.key} for {names}")
    except (certs.CertError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """The TLS and token options of a command that talks to workers."""
    g = parser.add_argument_group(
        "security", "mutual TLS and/or a token; use the same settings as the workers"
    )
    g.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="use DIR/ca.pem and DIR/orchestrator.pem/.key (with --local, also DIR/HOST.pem "
        "and DIR/HOST.key for each worker started)",
    )
    g.add_argument("--tls-ca", metavar="PEM", help="CA certificate the workers' certs are from")
    g.add_argument("--tls-cert", metavar="PEM", help="this client's certificate")
    g.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    g.add_argument(
        "--token-file", metavar="PATH", help="send 'authorization: Bearer <token in PATH>'"
    )


def security_from_args(args):
    """A `splitnn.security.policy.Security` from the options above, or None if none was given."""
    from splitnn.security.policy import Security

    return Security.from_options(
        tls_dir=getattr(args, "tls_dir", None),
        ca=getattr(args, "tls_ca", None),
        cert=getattr(args, "tls_cert", None),
        key=getattr(args, "tls_key", None),
        token_file=getattr(args, "token_file", None),
    )


def main(argv=None) -> int:
    """Stand-alone entry: ``python -m splitnn.orchestrator.cli_certs certs init --dir DIR``."""
    parser = argparse.ArgumentParser(prog="splitnn")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
