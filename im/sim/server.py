"""Serve a simulator for people (``im sim``) and for tests that need a real socket (the
vendors' own Python clients): uvicorn, optional TLS, webhook delivery in the background."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from im.sim.core import Simulator

DELIVERY_INTERVAL = 0.05


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server started later (a daemon process). Never
    the same one twice in this process, and never one a simulator serves from meanwhile."""
    with _bound_socket(host) as sock:
        port: int = sock.getsockname()[1]
        _HANDED_OUT.add(port)
        return port


def _bound_socket(host: str) -> socket.socket:
    """A socket bound to a free port that free_port has not handed out: the kernel may give
    a just-closed port again, and the daemon it was handed to may not be listening yet."""
    passed: list[socket.socket] = []  # held open meanwhile, so the kernel picks another
    try:
        while True:
            sock = socket.socket()
            sock.bind((host, 0))
            if sock.getsockname()[1] not in _HANDED_OUT:
                return sock
            passed.append(sock)
    finally:
        for sock in passed:
            sock.close()


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``host`` (and localhost), valid for 30 days: (cert.pem, key.pem).
    The certificate is its own CA, so ``--ca-bundle cert.pem`` trusts it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"im simulator {host}")])
    now = datetime.now(UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Delivering:
    """The simulator's app, plus a lifespan that delivers its webhooks in the background."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.app: ASGIApp = sim.app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        async with self._deliveries():
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    @contextlib.asynccontextmanager
    async def _deliveries(self) -> AsyncIterator[None]:
        async def loop() -> None:
            async with httpx.AsyncClient(timeout=10.0) as client:
                while True:
                    try:
                        await self.sim.webhooks.deliver_async(client)
                    except Exception as exc:  # a delivery loop that dies silently hides bugs
                        print(f"im sim: webhook delivery failed: {exc}", flush=True)
                    await asyncio.sleep(DELIVERY_INTERVAL)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def config(
    sim: Simulator,
    host: str,
    port: int,
    cert: Path | None = None,
    key: Path | None = None,
    log_level: str = "warning",
) -> uvicorn.Config:
    sim.served = True
    options: dict[str, Any] = {}
    if cert and key:
        options = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    return uvicorn.Config(
        _Delivering(sim),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        **options,
    )


@dataclass
class Served:
    url: str
    cafile: Path | None


@contextlib.contextmanager
def serve_in_thread(
    sim: Simulator, *, tls_dir: Path | None = None, host: str = "127.0.0.1"
) -> Iterator[Served]:
    """Serve ``sim`` on a free loopback port until the block ends (tests, the demo)."""
    cert = key = None
    if tls_dir is not None:
        cert, key = self_signed_certificate(tls_dir, host)
    sock = _bound_socket(host)  # held from the moment it is chosen
    port = sock.getsockname()[1]
    server = uvicorn.Server(config(sim, host, port, cert, key))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"sim-{sim.kind}", daemon=True
    )
    thread.start()
    scheme = "https" if cert else "http"
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {sim.kind} simulator did not start")
            time.sleep(0.01)
        yield Served(f"{scheme}://{host}:{port}", cert)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
