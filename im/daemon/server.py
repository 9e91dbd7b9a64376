"""uvicorn's server, for a program that *is* the server (``im daemon``, ``im sim``).

uvicorn re-raises the SIGINT / SIGTERM it handled once it has shut down, so that an embedding
program stops too. Here the shutdown is the program's own clean end, so it exits 0.
"""

from __future__ import annotations

import socket
from types import FrameType

import uvicorn

from im.errors import UsageError


def check_port(host: str, port: int) -> None:
    """Fail with one clear line, before anything starts, when the port is taken."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror:
            raise UsageError(f"--host {host[:100]} is not an address of this machine") from None
        except OSError as exc:
            fix = "pass another --host" if exc.errno == 99 else "pass another --port"
            raise UsageError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}", fix
            ) from None
        except (OverflowError, ValueError):
            raise UsageError(f"--host {host[:100]} is not an address") from None


def check_tls(cert: str, key: str) -> None:
    """Load the certificate and key once before serving, naming what is wrong."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"--tls-cert {cert[:200]} / --tls-key {key[:200]} cannot be used: "
            f"{getattr(exc, 'reason', None) or exc.__class__.__name__}",
            "give a PEM certificate and its private key",
        ) from None


class Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
