"""`python -m service` / `hfserve`: parse flags and serve."""

from __future__ import annotations

import sys

import uvloop

from service.cli import build_parser, configs_from_args
from service.errors import StartupError
from service.logging_setup import configure_logging


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        engine_config, server_config = configs_from_args(args)
    except (ValueError, StartupError) as exc:
        print(f"hfserve: {exc}", file=sys.stderr)
        return 2
    configure_logging(server_config.log_format, server_config.log_level)
    from service.server import serve  # imports torch; after argument errors have had their chance

    try:
        return uvloop.run(serve(engine_config, server_config))
    except StartupError as exc:
        print(f"hfserve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
