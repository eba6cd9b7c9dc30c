"""Command line entry point: ``python -m airflow_provider_smspartner.sandbox``.

Prints one line ``SMS Partner sandbox listening on http://HOST:PORT/v1 (N stops)`` once it is ready
(so a parent process can read the URL when ``--port 0`` picked one), then serves until SIGINT or
SIGTERM. The API key is never printed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from airflow_provider_smspartner.sandbox.faults import ENDPOINTS, FAULT_KINDS
from airflow_provider_smspartner.sandbox.server import ERROR_STYLES, SandboxServer, is_loopback_host


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the sandbox CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_smspartner.sandbox",
        description="Serve a local emulator of the SMS Partner stop-list API (JSON only).",
    )
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
    parser.add_argument("--seed", type=int, default=0, help="seed for the numbers and the fault draws")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address (no real security!)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sandbox until SIGINT/SIGTERM; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.allow_remote and not is_loopback_host(args.host):
        parser.error(f"refusing non-loopback host {args.host!r}; pass --allow-remote to override")
    if args.seed_stops < 0 or args.latency_ms < 0 or args.rate_limit < 0:
        parser.error("--seed-stops, --latency-ms and --rate-limit must not be negative")

    stop_requested = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    sandbox = SandboxServer(
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
        allow_remote=args.allow_remote,
    )
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
