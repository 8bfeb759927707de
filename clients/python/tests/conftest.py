"""The tests run against a real Conveyor system: CONVEYOR_URL names its gateway (the repository's
test/e2e/python-client.e2e.test.ts starts one, with a worker, and runs these tests against it).
Images named by URL are served from this process, on 127.0.0.1 (the gateway must allow it:
URL_ALLOW_CIDRS=127.0.0.1/32)."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SEVEN = Path(__file__).resolve().parents[3] / "docs" / "examples" / "seven.png"


@pytest.fixture(scope="session")
def base_url() -> str:
    url = os.environ.get("CONVEYOR_URL")
    if not url:
        raise RuntimeError("CONVEYOR_URL is not set: run these tests through test/e2e/python-client.e2e.test.ts (or against a gateway of your own)")
    return url


@pytest.fixture(scope="session")
def seven_path() -> Path:
    return SEVEN


@pytest.fixture(scope="session")
def seven() -> bytes:
    return SEVEN.read_bytes()


@pytest.fixture(scope="session")
def image_url(seven: bytes) -> Iterator[str]:
    """http://127.0.0.1:<port>/seven.png, served by a thread of this process."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path != "/seven.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(seven)))
            self.end_headers()
            self.wfile.write(seven)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/seven.png"
    finally:
        server.shutdown()
        server.server_close()
