"""Every passive reply type renders exactly as WeChat documents it (docs/wechat.md §4.1)."""

from __future__ import annotations

import pytest

from acme.wxplatform.v1 import inbound_message_pb2 as inbound
from acme.wxplatform.v1 import passive_reply_pb2 as pr
from edge.replies import reply_fields
from wxplatform.wechat.payload import render_xml

PUSH = inbound.InboundMessage(to_user_name="gh_acct", from_user_name="oUser")
HEAD = (
    "<xml><ToUserName><![CDATA[oUser]]></ToUserName><FromUserName><![CDATA[gh_acct]]></FromUserName>"
    "<CreateTime>1700000000</CreateTime>"
)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            pr.PassiveReply(text=pr.TextReply(content="line 1\nline 2")),
            "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[line 1\nline 2]]></Content>",
        ),
        (
            pr.PassiveReply(image=pr.MediaReply(media_id="M1")),
            "<MsgType><![CDATA[image]]></MsgType><Image><MediaId><![CDATA[M1]]></MediaId></Image>",
        ),
        (
            pr.PassiveReply(voice=pr.MediaReply(media_id="V1")),
            "<MsgType><![CDATA[voice]]></MsgType><Voice><MediaId><![CDATA[V1]]></MediaId></Voice>",
        ),
        (
            pr.PassiveReply(video=pr.VideoReply(media_id="F1", title="T")),
            "<MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[F1]]></MediaId>"
            "<Title><![CDATA[T]]></Title></Video>",
        ),
        (
            pr.PassiveReply(
                music=pr.MusicReply(title="S", music_url="http://m", thumb_media_id="TH")
            ),
            "<MsgType><![CDATA[music]]></MsgType><Music><Title><![CDATA[S]]></Title>"
            "<MusicUrl><![CDATA[http://m]]></MusicUrl><ThumbMediaId><![CDATA[TH]]></ThumbMediaId></Music>",
        ),
        (
            pr.PassiveReply(
                news=pr.NewsReply(
                    articles=[pr.NewsArticle(title="A", description="D", pic_url="P", url="U")]
                )
            ),
            "<MsgType><![CDATA[news]]></MsgType><ArticleCount>1</ArticleCount><Articles><item>"
            "<Title><![CDATA[A]]></Title><Description><![CDATA[D]]></Description>"
            "<PicUrl><![CDATA[P]]></PicUrl><Url><![CDATA[U]]></Url></item></Articles>",
        ),
        (
            pr.PassiveReply(transfer_customer_service=pr.TransferCustomerServiceReply()),
            "<MsgType><![CDATA[transfer_customer_service]]></MsgType>",
        ),
        (
            pr.PassiveReply(
                transfer_customer_service=pr.TransferCustomerServiceReply(kf_account="k@a")
            ),
            "<MsgType><![CDATA[transfer_customer_service]]></MsgType>"
            "<TransInfo><KfAccount><![CDATA[k@a]]></KfAccount></TransInfo>",
        ),
    ],
)
def test_reply_xml(reply: pr.PassiveReply, expected: str) -> None:
    fields = reply_fields(reply, PUSH, 1_700_000_000)
    assert fields is not None
    assert render_xml(fields).decode() == HEAD + expected + "</xml>"


def test_no_reply_is_none() -> None:
    assert reply_fields(pr.PassiveReply(), PUSH, 1) is None
