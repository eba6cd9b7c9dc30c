"""Command line entry point: ``python -m airflow_provider_smspartner.sandbox``.

Prints one line ``SMS Partner sandbox listening on http://HOST:PORT/v1 (N stops)`` once it is ready
(so a parent process can read the URL when ``--port 0`` picked one), then serves until SIGINT or
SIGTERM. The API key is never printed.

To rehearse answers a client must refuse: ``--respond ENDPOINT STATUS BODY`` (any raw body and
status, on every request to the endpoint), ``--redirect ENDPOINT STATUS URL`` (a redirect to
another host), ``--fault-rate trickle=1`` with ``--trickle-seconds`` (a body written one byte
at a time). See ``--help``.

What the sandbox saw is served as JSON at ``GET http://HOST:PORT/_sandbox/stats`` while it runs,
and written to ``--stats-file PATH`` when it stops (same JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from airflow_provider_smspartner.sandbox.endpoints import ERROR_STYLES
from airflow_provider_smspartner.sandbox.faults import ENDPOINTS, FAULT_KINDS, normalize_endpoint
from airflow_provider_smspartner.sandbox.server import SandboxServer, is_loopback_host


def _fault_rate(text: str) -> tuple[str, float]:
    name, sep, rate = text.partition("=")
    if not sep or name not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected KIND=RATE with KIND one of {', '.join(sorted(FAULT_KINDS))}, got {text!r}"
        )
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate must be a number between 0 and 1, got {rate!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"rate must be between 0 and 1, got {rate!r}")
    return name, value


_EPILOG = """\
rehearsing answers a client must refuse (scripted answers come before any check):
  --respond stop-sms/list 200 '{"nbData": null, "data": null}'   a list that is not one
  --respond stop-sms/add 200 '{"success": "false", "code": 200}'  success as a string
  --respond me 401 'Unauthorized'                                  a 401 without an API code
  --redirect stop-sms/add 307 http://127.0.0.1:9/elsewhere         a redirect to another host
  --fault-rate trickle=1 --trickle-seconds 0.5                     a body at one byte per 0.5 s
"""


def _endpoint(text: str) -> str:
    try:
        return normalize_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _status(text: str, low: int = 200, high: int = 599) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise argparse.ArgumentTypeError(f"expected an HTTP status from {low} to {high}, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the sandbox CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_smspartner.sandbox",
        description="Serve a local emulator of the SMS Partner stop-list API (JSON only).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_server_options(parser)
    _add_fault_options(parser)
    _add_script_options(parser)
    parser.add_argument(
        "--stats-file",
        metavar="PATH",
        help="write what the sandbox saw (requests per endpoint, status counts incl. 429, busiest "
        "second, faults, adds applied) as JSON to PATH on exit; also served at GET /_sandbox/stats",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the numbers and the fault draws")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address (no real security!)"
    )
    return parser


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for a free one (default: 8765)")
    parser.add_argument(
        "--api-key", default="sandbox-key", help="the API key the sandbox accepts (default: sandbox-key)"
    )
    parser.add_argument(
        "--seed-stops", type=int, default=0, help="random French mobile numbers to put on the list at start"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="milliseconds added to every response")
    parser.add_argument(
        "--rate-limit", type=float, default=0.0, help="requests per second before HTTP 429; 0 = unlimited"
    )
    parser.add_argument(
        "--error-style",
        choices=ERROR_STYLES,
        default="http_4xx",
        help="http_4xx: API errors as HTTP 400/401/404; http_200: as HTTP 200 with success=false",
    )


def _add_fault_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fault-rate",
        type=_fault_rate,
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=f"random fault probability per request, repeatable; KIND in {', '.join(sorted(FAULT_KINDS))}",
    )
    parser.add_argument(
        "--fault-endpoint",
        action="append",
        choices=ENDPOINTS,
        help="limit random faults to this endpoint, repeatable (default: all endpoints)",
    )
    parser.add_argument(
        "--slow-seconds", type=float, default=3.0, help="delay of the 'slow' fault (default: 3)"
    )
    parser.add_argument(
        "--trickle-seconds",
        type=float,
        default=0.5,
        help="pause between two bytes of the 'trickle' fault's body (default: 0.5)",
    )


def _add_script_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--respond",
        nargs=3,
        action="append",
        default=[],
        metavar=("ENDPOINT", "STATUS", "BODY"),
        help="answer every request on ENDPOINT with HTTP STATUS and the raw BODY, before any check "
        "(e.g. --respond stop-sms/list 200 '{}' or --respond me 401 ''); repeatable",
    )
    parser.add_argument(
        "--redirect",
        nargs=3,
        action="append",
        default=[],
        metavar=("ENDPOINT", "STATUS", "URL"),
        help="answer every request on ENDPOINT with a redirect (STATUS 300-399, e.g. 302 or 307) to "
        "URL; a client that follows it takes the API key there; repeatable",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sandbox until SIGINT/SIGTERM; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.allow_remote and not is_loopback_host(args.host):
        parser.error(f"refusing non-loopback host {args.host!r}; pass --allow-remote to override")
    if args.seed_stops < 0 or args.latency_ms < 0 or args.rate_limit < 0:
        parser.error("--seed-stops, --latency-ms and --rate-limit must not be negative")
    if not args.trickle_seconds > 0:
        parser.error("--trickle-seconds must be > 0")
    scripted = _scripted_answers(parser, args)

    stop_requested = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    sandbox = _sandbox(args)
    for endpoint, status, text, is_redirect in scripted:
        try:
            if is_redirect:
                sandbox.redirect(text, status, endpoint=endpoint, count=None)
            else:
                sandbox.respond(text, status, endpoint=endpoint, count=None)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        sandbox.start()
    except OSError as exc:
        print(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        print(f"SMS Partner sandbox listening on {sandbox.base_url} ({len(sandbox.state)} stops)", flush=True)
        # A timed wait keeps the main thread responsive to signals.
        while not stop_requested.wait(0.2):
            pass
    finally:
        sandbox.stop()
        if args.stats_file:
            write_stats(args.stats_file, sandbox.stats.as_dict())
    return 0


def _scripted_answers(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> list[tuple[str, int, str, bool]]:
    """``--respond`` and ``--redirect`` as ``(endpoint, status, body or URL, is a redirect)``."""
    scripted: list[tuple[str, int, str, bool]] = []
    for option, values, low, high in (
        ("--respond", args.respond, 200, 599),
        ("--redirect", args.redirect, 300, 399),
    ):
        for endpoint, status, text in values:
            try:
                scripted.append(
                    (_endpoint(endpoint), _status(status, low, high), text, option == "--redirect")
                )
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{option}: {exc}")
    return scripted


def _sandbox(args: argparse.Namespace) -> SandboxServer:
    return SandboxServer(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        seed_stops=args.seed_stops,
        latency=args.latency_ms / 1000.0,
        rate_limit=args.rate_limit or None,
        error_style=args.error_style,
        fault_rates=dict(args.fault_rate),
        fault_endpoints=args.fault_endpoint,
        seed=args.seed,
        slow_seconds=args.slow_seconds,
        trickle_seconds=args.trickle_seconds,
        allow_remote=args.allow_remote,
    )


def write_stats(path: str, stats: dict) -> None:
    """Write ``stats`` as JSON to ``path`` atomically (a reader never sees half a file)."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(stats, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
