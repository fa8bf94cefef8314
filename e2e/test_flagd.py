"""flagd RPC end to end: the Python OpenFeature SDK with ``openfeature-provider-flagd`` (RPC
mode, no TLS) against the real server's gRPC port. Every flag type for several units equals
the native ``/v1/allocate`` answer; error paths reach the client as OpenFeature error codes;
an admin PUT reaches the provider as a configuration change through ``EventStream``."""

from __future__ import annotations

import threading
import urllib.request

import pytest
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.exception import ErrorCode

from conftest import ADMIN_TOKEN, FLAGS, REPO, Server, contexts, details, reason_str

DEMO = (REPO / "server/src/demo.yaml").read_text()


def provider(server: Server) -> FlagdProvider:
    return FlagdProvider(
        host="127.0.0.1",
        port=server.grpc_port,
        tls=False,
        resolver_type=ResolverType.RPC,
        deadline_ms=5000,
    )


@pytest.fixture(scope="module")
def client(server):
    api.set_provider_and_wait(provider(server), domain="flagd")
    yield api.get_client("flagd")


@pytest.mark.parametrize("unit,attrs", contexts())
def test_every_type_equals_native_allocate(server, client, unit, attrs):
    native = server.native({"targetingKey": unit, **attrs})["flags"]
    ctx = EvaluationContext(targeting_key=unit, attributes=attrs)
    for key, kind, default in FLAGS:
        got = details(client, kind, key, default, ctx)
        want = native[key]
        assert got.error_code is None, (key, got.error_message)
        assert got.value == want["value"], key
        assert isinstance(got.value, type(want["value"])), key
        assert got.variant == want["variant"], key
        # The provider caches STATIC flags and then reports CACHED.
        assert reason_str(got.reason) in (want["reason"], "CACHED"), key


def test_integer_flags_also_answer_float(server, client):
    # row-count, not the STATIC retry-limit: the provider caches STATIC answers by key only.
    want = server.native({"targetingKey": "m-1", "country": "US"})["flags"]["row-count"]
    got = client.get_float_details("row-count", -1.0, EvaluationContext("m-1", {"country": "US"}))
    assert got.error_code is None, got.error_message
    assert isinstance(got.value, float) and got.value == want["value"]


def test_unknown_flag_is_flag_not_found(client):
    got = client.get_boolean_details("no-such-flag", True, EvaluationContext("m-1"))
    assert got.error_code == ErrorCode.FLAG_NOT_FOUND
    assert got.value is True


def test_wrong_type_is_type_mismatch(client):
    got = client.get_boolean_details("artwork-style", False, EvaluationContext("m-1"))
    assert got.error_code == ErrorCode.TYPE_MISMATCH
    assert got.value is False


def test_missing_targeting_key_on_a_rollout_is_an_error(client):
    # flagd's gRPC protocol has no status for it: the provider reports GENERAL.
    got = client.get_boolean_details("search.new-ranker", True, EvaluationContext(attributes={"country": "DE"}))
    assert got.error_code == ErrorCode.GENERAL
    assert got.value is True


def test_admin_put_reaches_the_provider_as_a_configuration_change():
    server = Server("--admin-token", ADMIN_TOKEN)
    try:
        changed: list[list[str]] = []
        seen = threading.Event()

        def on_change(event_details) -> None:
            changed.append(list(event_details.flags_changed or []))
            if "checkout.retry-limit" in (event_details.flags_changed or []):
                seen.set()

        api.set_provider_and_wait(provider(server), domain="flagd-change")
        c = api.get_client("flagd-change")
        c.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
        before = c.get_integer_details("checkout.retry-limit", -1, EvaluationContext("m-1"))
        assert before.value == 3

        req = urllib.request.Request(
            f"{server.mgmt}/admin/config",
            data=DEMO.replace("variants: { three: 3 }", "variants: { three: 4 }").encode(),
            headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/yaml"},
            method="PUT",
        )
        with urllib.request.urlopen(req, timeout=5) as res:
            assert res.status == 200

        assert seen.wait(10), f"no configuration change seen: {changed}"
        assert changed[-1] == ["checkout.retry-limit"]
        after = c.get_integer_details("checkout.retry-limit", -1, EvaluationContext("m-1"))
        assert after.value == 4
        assert server.native({"targetingKey": "m-1"})["flags"]["checkout.retry-limit"]["value"] == 4
    finally:
        server.stop()
