"""The local Prefect server: Prefect's own app with a Host-header check in front, on 127.0.0.1.

Prefect 3.9 has CORS settings but no Host check, so binding to loopback alone still lets a web page reach the
server through DNS rebinding (a name of the attacker's that resolves to 127.0.0.1: same origin to the browser,
so CORS never applies). This runs what ``prefect server start`` runs with one worker — ``create_app(final=True)``
under uvicorn, with the same keep-alive, websocket ping and log-level settings — behind Starlette's
``TrustedHostMiddleware``: a request whose ``Host`` is not 127.0.0.1 or localhost gets 400. CORS is Prefect's,
set by the caller through ``PREFECT_SERVER_CORS_ALLOWED_ORIGINS``.

    python -m radfm.services.prefect_server --port 4200
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from radfm.services.process import HOST, LOOPBACK_NAMES


def create_app() -> object:
    """Prefect's server app (API, UI, background services) that answers only to the loopback names."""
    from prefect.server.api.server import create_app as prefect_app
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = prefect_app(final=True)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_NAMES))
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app on ``HOST:--port`` until SIGTERM/SIGINT."""
    import uvicorn
    from prefect.settings import (
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    parser = argparse.ArgumentParser(prog="python -m radfm.services.prefect_server", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=HOST, port=args.port,
                timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
                ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
                ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
                log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower())


if __name__ == "__main__":
    main()
