"""Subscribe-message value types (docs/wechat.md §5.4): what passes and what is 47003."""

from __future__ import annotations

import pytest

from wxplatform.sim.values import VALUE_TYPES, type_of_key, valid_value

GOOD = [
    ("thing", "广州腾讯科技有限公司"),
    ("thing", "Order #42 shipped"),
    ("thing", "二" * 20),
    ("number", "42"),
    ("number", "3.1415"),
    ("number", "9" * 32),
    ("character_string", "SN-2024/04-26#A"),
    ("character_string", "x" * 32),
    ("time", "15:01"),
    ("time", "2019年10月1日 15:01"),
    ("time", "2019年8月8日"),  # the bizsend doc's own example
    ("time", "15:00~17:30"),
    ("date", "2024-01-01 12:00"),
    ("date", "2019年10月1日"),
    ("date", "2024/02/29"),
    ("date", "2024年4月26日 ~ 2024年4月28日"),
    ("amount", "¥99.00"),
    ("amount", "39.8元"),
    ("amount", "$1234567890"),
    ("phrase", "已完成"),
    ("name", "张三"),
    ("name", "John Smith"),
    ("letter", "ABCdef"),
    ("symbol", "%"),
    ("symbol", "+-*/"),
    ("phone_number", "+86 138-0013-8000"),
    ("car_number", "粤A12345"),
    ("car_number", "粤B1234学"),
    ("car_number", "粤AD12345"),  # new-energy plates have 8 characters
]

BAD = [
    ("thing", ""),
    ("thing", "二" * 21),
    ("thing", "line\nbreak"),
    ("number", "-1"),
    ("number", "1e5"),
    ("number", "9" * 33),
    ("number", "四十二"),
    ("character_string", "中文"),
    ("character_string", "has space"),
    ("character_string", "x" * 33),
    ("time", "昨天"),
    ("time", "24:00"),
    ("time", "2019年13月1日"),
    ("time", "1~2~3"),
    ("date", "15:01"),
    ("date", "2023-02-29"),
    ("date", "26/04/2024"),
    ("amount", "九十九元"),
    ("amount", "¥12345678901"),
    ("amount", "¥¥1"),
    ("phrase", "进行中的任务"),
    ("phrase", "done"),
    ("name", "张" * 11),
    ("name", "A" * 21),
    ("name", "R2D2"),
    ("letter", "abc1"),
    ("letter", "x" * 33),
    ("symbol", "a"),
    ("symbol", "%%%%%%"),
    ("phone_number", "call me"),
    ("phone_number", "1" * 18),
    ("car_number", "粤A1234567"),
    ("car_number", "粤A-1234"),
]


@pytest.mark.parametrize(("kind", "value"), GOOD)
def test_valid_values(kind: str, value: str) -> None:
    assert valid_value(kind, value)


@pytest.mark.parametrize(("kind", "value"), BAD)
def test_invalid_values(kind: str, value: str) -> None:
    assert not valid_value(kind, value)


def test_every_type_is_covered_both_ways() -> None:
    assert {k for k, _ in GOOD} == set(VALUE_TYPES) == {k for k, _ in BAD}


def test_types_from_key_names() -> None:
    assert type_of_key("thing1") == "thing"
    assert type_of_key("character_string12") == "character_string"
    assert type_of_key("phone_number3") == "phone_number"
    assert type_of_key("thing") is None  # WeChat's keys always carry a number
    assert type_of_key("keyword1") is None
    assert not valid_value("keyword", "x")
