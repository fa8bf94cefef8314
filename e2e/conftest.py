"""Shared e2e fixtures: start the real allot-server binary on free local ports.

The binary comes from ``ALLOT_SERVER_BIN`` (default: ``target/debug/allot-server`` of the
repository). Each server gets explicit ``--http-addr/--grpc-addr/--mgmt-addr`` ports on
127.0.0.1 and is ready once ``/readyz`` on the management port answers 200.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "e2e-admin-token"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago: all bound to 0 at once (so no two are
    the same), then closed."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# Attempts at starting a server whose ports another process took first.
START_ATTEMPTS = 3


def post_json(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, dict]:
    """POST ``body`` as JSON; returns (status, headers, decoded body or {})."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as res:
            raw = res.read()
            return res.status, dict(res.headers), json.loads(raw) if raw else {}
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, dict(e.headers), json.loads(raw) if raw else {}


class Server:
    """One running allot-server process."""

    def __init__(self, *extra: str) -> None:
        binary = os.environ.get("ALLOT_SERVER_BIN", str(REPO / "target/debug/allot-server"))
        if not os.path.exists(binary):
            raise RuntimeError(f"server binary {binary} not found; build it with cargo build -p allot-server")
        for attempt in range(1, START_ATTEMPTS + 1):
            self.http_port, self.grpc_port, self.mgmt_port = free_ports(3)
            self.log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--http-addr", f"127.0.0.1:{self.http_port}",
                    "--grpc-addr", f"127.0.0.1:{self.grpc_port}",
                    "--mgmt-addr", f"127.0.0.1:{self.mgmt_port}",
                    *extra,
                ],
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
            try:
                self._wait_ready()
                return
            except RuntimeError:
                # Between free_ports closing a port and the server binding it, another process
                # may take it: start again on new ports.
                if attempt < START_ATTEMPTS and "Address already in use" in self.output():
                    continue
                raise

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def mgmt(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}"

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"allot-server exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.mgmt}/readyz", timeout=1) as res:
                    if res.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"allot-server not ready within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def native(self, context: dict) -> dict:
        """The native ``/v1/allocate`` answer for ``context``."""
        status, _, body = post_json(f"{self.http}/v1/allocate", {"context": context})
        assert status == 200, body
        return body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def server():
    """A server on the embedded demo config, with admin writes enabled."""
    s = Server("--admin-token", ADMIN_TOKEN)
    yield s
    s.stop()


# Units and attributes that reach every kind of decision in the demo config: experiment
# cells in all three layers, holdouts, rules, rollouts by member and by device.
def contexts() -> list[tuple[str, dict]]:
    out = []
    for i in range(12):
        attrs: dict = {"country": ["US", "SE", "CA", "DE"][i % 4]}
        if i % 3 == 0:
            attrs.update(platform="tv", app_version="5.1.0", device_id=f"d-{i}")
        if i % 4 == 1:
            attrs["tenure_months"] = 30
        out.append((f"m-{i}", attrs))
    return out


# (flag key, OpenFeature type, default value) for every type of the demo config.
FLAGS = [
    ("prefetch", "boolean", False),
    ("search.new-ranker", "boolean", False),
    ("legacy-player", "boolean", True),
    ("artwork-style", "string", "fallback"),
    ("tv-theme", "string", "fallback"),
    ("row-count", "integer", -1),
    ("checkout.retry-limit", "integer", -1),
    ("buffer-ratio", "float", -1.0),
    ("discount-rate", "float", -1.0),
    ("abr", "object", {}),
]


def details(client, kind: str, key: str, default, ctx):
    """``client.get_<kind>_details``."""
    return getattr(client, f"get_{kind}_details")(key, default, ctx)


def reason_str(reason) -> str:
    return getattr(reason, "value", reason)
