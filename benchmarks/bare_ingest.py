"""The ingestion baseline of SPEC §13: a bare uvicorn endpoint (plain ASGI, no framework) that
verifies a Standard Webhooks HMAC-SHA256 (``webhook-id``, ``webhook-timestamp`` within 5
minutes, ``webhook-signature`` over ``id.timestamp.body``, as ServiceNow deliveries are signed)
and inserts one row into a WAL SQLite file (``synchronous=NORMAL`` and ``BEGIN IMMEDIATE``, as
`im` writes), then answers 202. Run by ``ingestion.py``; on its own:

    python benchmarks/bare_ingest.py --port 8099 --db /tmp/bare.db --secret-file SECRET
                                     [--framework asgi|starlette]

``--framework starlette`` serves the same handler as one Starlette route (the framework the
daemon uses), to show what the framework alone costs. uvicorn picks its event loop and HTTP
parser as it does for `im daemon` (uvloop and httptools when installed), one worker, access
log off.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import sqlite3
import time
from pathlib import Path
from typing import Any

TOLERANCE = 300


def make_app(db_path: Path, secret: str, framework: str = "asgi") -> Any:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, delivery_id TEXT NOT NULL,"
        " received_at REAL NOT NULL, body BLOB NOT NULL)"
    )

    def ingest(msg_id: bytes, stamp: bytes, signatures: bytes, body: bytes) -> tuple[int, bytes]:
        """Verify, then store: the status and body of the answer."""
        now = time.time()
        offered = [part[3:] for part in signatures.split() if part.startswith(b"v1,")]
        expected = base64.b64encode(
            hmac.new(key, msg_id + b"." + stamp + b"." + body, hashlib.sha256).digest()
        )
        if not (
            msg_id
            and stamp.isdigit()
            and abs(int(stamp) - now) <= TOLERANCE
            and any(hmac.compare_digest(expected, sig) for sig in offered)
        ):
            return 401, b'{"error":"unauthenticated"}'
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO deliveries (delivery_id, received_at, body) VALUES (?, ?, ?)",
            (msg_id.decode(), now, body),
        )
        conn.execute("COMMIT")
        return 202, b'{"status":"accepted"}'

    if framework == "starlette":
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            h = request.headers
            status, answer = ingest(
                h.get("webhook-id", "").encode(),
                h.get("webhook-timestamp", "").encode(),
                h.get("webhook-signature", "").encode(),
                body,
            )
            return Response(answer, status, media_type="application/json")

        async def health(request: Request) -> Response:
            return Response(b'{"status":"ok"}', media_type="application/json")

        return Starlette(
            routes=[
                Route("/webhooks/{integration}", endpoint, methods=["POST"]),
                Route("/", health),
            ]
        )

    async def answer(send: Any, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await answer(send, 200, b'{"status":"ok"}')
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers = dict(scope["headers"])
        await answer(
            send,
            *ingest(
                headers.get(b"webhook-id", b""),
                headers.get(b"webhook-timestamp", b""),
                headers.get(b"webhook-signature", b""),
                b"".join(chunks),
            ),
        )

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--secret-file", type=Path, required=True)
    parser.add_argument(
        "--framework", choices=("asgi", "starlette"), default="asgi",
        help="a plain ASGI callable (default) or one Starlette route",
    )  # fmt: skip
    args = parser.parse_args()
    app = make_app(args.db, args.secret_file.read_text().strip(), args.framework)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off"
    )


if __name__ == "__main__":
    main()
