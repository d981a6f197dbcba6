"""Send validation: every bad field named, each under its own name, before any call."""

from __future__ import annotations

from typing import cast

import pytest

from acme.wxplatform.v1 import messaging_service_pb2 as pb
from tests.support import app_table, make_settings
from wxplatform.config import AppConfig
from wxplatform.core.services.sends import customer_send, subscribe_send, template_send
from wxplatform.errors import InvalidRequest

FOLLOWER = "oFollower00000000000000001"


def official_account() -> AppConfig:
    return make_settings(app_table("wxoa1")).apps["wxoa1"]


def violations(caught: pytest.ExceptionInfo[InvalidRequest]) -> dict[str, str]:
    return {v.field: v.description for v in caught.value.violations}


def test_a_bad_key_is_reported_with_every_other_bad_field() -> None:
    request = pb.SendTemplateRequest(app_id="wxoa1", idempotency_key="", url="ftp://x")
    with pytest.raises(InvalidRequest) as caught:
        template_send(official_account(), request, "cmid")
    assert set(violations(caught)) == {"idempotency_key", "to_user", "template_id", "url", "data"}


@pytest.mark.parametrize("key", ["", "k" * 129, "ключ", "tab\there"])
def test_keys_must_be_short_printable_ascii(key: str) -> None:
    request = pb.SendCustomerMessageRequest(
        app_id="wxoa1", idempotency_key=key, to_user=FOLLOWER, text=pb.CustomerText(content="hi")
    )
    with pytest.raises(InvalidRequest) as caught:
        customer_send(official_account(), request)
    assert set(violations(caught)) == {"idempotency_key"}


def test_mini_program_fields_on_an_official_account_are_named_each() -> None:
    request = pb.SendSubscribeMessageRequest(
        app_id="wxoa1",
        idempotency_key="k1",
        to_user=FOLLOWER,
        template_id="SUB",
        lang="en_US",
        mini_program_state=pb.MINI_PROGRAM_STATE_TRIAL,
    )
    request.data["thing1"].value = "x"
    with pytest.raises(InvalidRequest) as caught:
        subscribe_send(official_account(), request)
    assert set(violations(caught)) == {"lang", "mini_program_state"}
    request.ClearField("lang")
    with pytest.raises(InvalidRequest) as caught:
        subscribe_send(official_account(), request)
    assert set(violations(caught)) == {"mini_program_state"}


def test_an_unknown_mini_program_state_is_refused() -> None:
    mini = make_settings(app_table("wxmp1", kind="mini_program", auto_reply=[], default_reply=None))
    request = pb.SendSubscribeMessageRequest(
        app_id="wxmp1",
        idempotency_key="k1",
        to_user=FOLLOWER,
        template_id="SUB",
        mini_program_state=cast(pb.MiniProgramState.ValueType, 42),  # a newer client's value
    )
    request.data["thing1"].value = "x"
    with pytest.raises(InvalidRequest) as caught:
        subscribe_send(mini.apps["wxmp1"], request)
    assert set(violations(caught)) == {"mini_program_state"}
