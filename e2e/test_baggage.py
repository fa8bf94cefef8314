"""Python OpenTelemetry reads the ``baggage`` header that allot's Rust ``tower`` layer sends.

The header comes from the ``print_baggage`` example (``sdk/examples/print_baggage.rs``): real
allocations stamped onto a request by ``allot::tower::StampLayer`` and merged with a caller's
baggage. ``W3CBaggagePropagator`` (opentelemetry-api) must extract the ``allot`` member as sent
and so the same experiment→cell pairs, and keep the caller's members.

The example binary is ``ALLOT_PRINT_BAGGAGE_BIN`` (``e2e/run.sh`` builds it); without it the
test runs it through ``cargo run``.
"""

from __future__ import annotations

import json
import os
import subprocess

from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from conftest import REPO

MEMBERS = [f"member-{i}" for i in range(200)]


def stamped_requests() -> list[dict]:
    binary = os.environ.get("ALLOT_PRINT_BAGGAGE_BIN")
    if binary:
        cmd = [binary, *MEMBERS]
    else:
        cmd = ["cargo", "run", "-q", "-p", "allot", "--example", "print_baggage",
               "--features", "tower", "--", *MEMBERS]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=600)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def cells_of(stamp: str) -> list[list[str]]:
    """The (experiment, cell) pairs of a stamp value ``1.<rev>.<exp>~<cell>...``."""
    version, _revision, *entries = stamp.split(".")
    assert version == "1"
    return [entry.split("~", 1) for entry in entries if not entry.startswith("+")]


def test_w3c_propagator_reads_the_experiment_cells():
    lines = stamped_requests()
    assert len(lines) == len(MEMBERS)
    seen_cells = set()
    for line in lines:
        ctx = W3CBaggagePropagator().extract(carrier={"baggage": line["header"]})
        entries = baggage.get_all(ctx)
        # The member arrives unchanged (only [A-Za-z0-9_~.-]), so the pairs are the same.
        assert entries["allot"] == line["stamp"]
        assert cells_of(entries["allot"]) == line["cells"]
        # The caller's members are kept (the forged `allot` one is not).
        assert entries["userId"] == "alice"
        assert entries["release"] == "web@1.42.0"
        assert "tenant" in entries
        seen_cells.update(tuple(c) for c in line["cells"])
    # Every experiment's cells and the holdout show up across the members.
    assert ("holdout-q4", "held") in seen_cells
    assert {c for e, c in seen_cells if e == "ranker"} == {"a", "b", "c-3"}
