"""OFREP end to end: the Python OpenFeature SDK with the OFREP provider against the real
server. Every flag type for several units equals the native ``/v1/allocate`` answer, and the
error paths reach the client as the right OpenFeature error codes."""

from __future__ import annotations

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.contrib.provider.ofrep import OFREPProvider

from conftest import FLAGS, contexts, details, post_json, reason_str


@pytest.fixture(scope="module")
def client(server):
    api.set_provider_and_wait(OFREPProvider(server.http), domain="ofrep")
    yield api.get_client("ofrep")


@pytest.mark.parametrize("unit,attrs", contexts())
def test_every_type_equals_native_allocate(server, client, unit, attrs):
    answer = server.native({"targetingKey": unit, **attrs})
    native = answer["flags"]
    ctx = EvaluationContext(targeting_key=unit, attributes=attrs)
    for key, kind, default in FLAGS:
        got = details(client, kind, key, default, ctx)
        want = native[key]
        assert got.error_code is None, (key, got.error_message)
        assert got.value == want["value"], key
        assert type(got.value) is type(want["value"]), key
        assert got.variant == want["variant"], key
        assert reason_str(got.reason) == want["reason"], key
        if "experiment" in want:
            assert got.flag_metadata["experiment"] == want["experiment"], key
            assert got.flag_metadata["cell"] == want["cell"], key
            assert got.flag_metadata["layer"] == want["layer"], key
        assert got.flag_metadata["revision"] == answer["revision"], key


def test_units_reach_experiments_in_every_layer(server):
    experiments = set()
    for unit, attrs in contexts():
        flags = server.native({"targetingKey": unit, **attrs})["flags"]
        experiments |= {f["experiment"] for f in flags.values() if "experiment" in f}
    assert {"abr-tuning", "tv-ui-refresh"} <= experiments, experiments
    assert experiments & {"smarter-prefetch", "artwork-v2"}, experiments


def test_unknown_flag_is_flag_not_found(client):
    got = client.get_boolean_details("no-such-flag", True, EvaluationContext("m-1"))
    assert got.error_code == ErrorCode.FLAG_NOT_FOUND
    assert got.value is True


def test_wrong_type_is_type_mismatch(client):
    got = client.get_boolean_details("artwork-style", False, EvaluationContext("m-1"))
    assert got.error_code == ErrorCode.TYPE_MISMATCH
    assert got.value is False
    got = client.get_integer_details("buffer-ratio", 7, EvaluationContext("m-1"))
    assert got.error_code == ErrorCode.TYPE_MISMATCH


def test_missing_targeting_key_on_a_rollout(client):
    got = client.get_boolean_details("search.new-ranker", True, EvaluationContext(attributes={"country": "DE"}))
    assert got.error_code == ErrorCode.TARGETING_KEY_MISSING
    assert got.value is True


def test_flags_without_a_unit_evaluate_without_targeting_key(client):
    got = client.get_integer_details("checkout.retry-limit", -1, EvaluationContext())
    assert got.error_code is None and got.value == 3 and reason_str(got.reason) == "STATIC"
    got = client.get_boolean_details("search.new-ranker", False, EvaluationContext(attributes={"country": "SE"}))
    assert got.error_code is None and got.value is True


def test_bulk_etag_and_not_modified(server):
    url = f"{server.http}/ofrep/v1/evaluate/flags"
    body = {"context": {"targetingKey": "m-1", "country": "SE"}}
    status, headers, first = post_json(url, body)
    assert status == 200
    etag = headers["etag"]
    assert len(first["flags"]) == 11
    status, _, _ = post_json(url, body, {"If-None-Match": etag})
    assert status == 304
    status, headers, _ = post_json(url, {"context": {"targetingKey": "m-2"}}, {"If-None-Match": etag})
    assert status == 200 and headers["etag"] != etag
