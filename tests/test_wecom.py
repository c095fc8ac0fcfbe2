"""WeCom (企业微信): callback crypto against an independent implementation, and the whole path from an
encrypted callback through the real spine (OCR backend) to message/send on a fake WeCom API server."""

from __future__ import annotations

import base64
import hashlib
import logging
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import SecretStr

from bots.wecom import WeComBot
from bots.wecom_crypto import (
    DecryptError,
    ReceiverIdError,
    SignatureError,
    WeComCrypto,
    XmlError,
    parse_flat_xml,
)
from db.models import Job
from service.backends.base import Answer, Request
from service.config import Config
from tests.conftest import InstrumentedBackend, wait_until
from tests.fake_wecom import FakeWeCom, running_fake_wecom
from tests.live import LiveService, running_service

CORP = "ww0123456789abcdef"
TOKEN = "QDG6eK"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"  # the sample key of WeCom's documentation
SECRET = "app-secret-value-0123"
AGENT = 1000002
USER = "zhangsan"
PATH = "/wecom/callback"


# --- an independent implementation of the official layout (no code from bots/) -------------------------


def reference_seal(message: bytes, prefix: bytes, corp_id: str = CORP, key_text: str = AES_KEY) -> str:
    """16 random bytes + big-endian length + message + corp id, PKCS#7 to 32 bytes, AES-256-CBC, base64."""
    key = base64.b64decode(key_text + "=")
    plain = prefix + struct.pack(">I", len(message)) + message + corp_id.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def reference_signature(*values: str) -> str:
    return hashlib.sha1("".join(sorted(values)).encode()).hexdigest()


def test_decrypts_an_independently_built_vector() -> None:
    message = "<xml><Content><![CDATA[你好，图问]]></Content></xml>".encode()
    sealed = reference_seal(message, prefix=b"0123456789abcdef")
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP)
    assert crypto.decrypt(sealed) == message.decode()
    assert crypto.encrypt(message, random_prefix=b"0123456789abcdef") == sealed
    assert crypto.signature("1700000000", "nonce1", sealed) == reference_signature(
        TOKEN, "1700000000", "nonce1", sealed
    )


@pytest.mark.parametrize("text", ["", "a", "x" * 6, "图问" * 500, "y" * (64 - 16 - 4 - len(CORP))])
def test_round_trip_including_a_whole_block_of_padding(text: str) -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP)
    assert crypto.decrypt(crypto.encrypt(text)) == text


def test_wrong_corp_id_bad_padding_and_bad_signature_are_refused() -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP)
    with pytest.raises(ReceiverIdError):
        crypto.decrypt(reference_seal(b"hi", b"0" * 16, corp_id="wwsomeoneelse"))
    key = base64.b64decode(AES_KEY + "=")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    badly_padded = encryptor.update(b"\x00" * 31 + b"\x05") + encryptor.finalize()
    with pytest.raises(DecryptError):
        crypto.decrypt(base64.b64encode(badly_padded).decode())
    with pytest.raises(DecryptError):
        crypto.decrypt("not base64!")
    sealed = crypto.encrypt("hi")
    with pytest.raises(SignatureError):
        crypto.verify("0" * 40, "1", "2", sealed)


def test_passive_reply_envelope_verifies() -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP)
    envelope = parse_flat_xml(crypto.encrypt_reply("<xml><Content>好</Content></xml>", "n0nce", "1700000000"))
    assert envelope["Nonce"] == "n0nce" and envelope["TimeStamp"] == "1700000000"
    crypto.verify(envelope["MsgSignature"], "1700000000", "n0nce", envelope["Encrypt"])
    assert crypto.decrypt(envelope["Encrypt"]) == "<xml><Content>好</Content></xml>"


def test_xml_with_a_dtd_is_refused() -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><xml><A>&b;</A></xml>'
    )
    with pytest.raises(XmlError):
        parse_flat_xml(bomb)
    assert parse_flat_xml("<xml><A><![CDATA[<!DOCTYPE is text here>]]></A><B><C>1</C></B></xml>") == {
        "A": "<!DOCTYPE is text here>",
        "B": "",
    }


@pytest.mark.parametrize("key", ["", "short", AES_KEY[:-1] + "!"])
def test_invalid_key_is_a_config_error(key: str) -> None:
    with pytest.raises(ValueError):
        WeComCrypto(TOKEN, key, CORP)


# --- the live path ---------------------------------------------------------------------------------


@dataclass
class Harness:
    """A running tuwen with the WeCom bot, the fake WeCom API it talks to, and a client for callbacks."""

    live: LiveService
    fake: FakeWeCom
    bot: WeComBot
    client: httpx.Client
    crypto: WeComCrypto

    def post(
        self, fields: dict[str, str], *, crypto: WeComCrypto | None = None, sign: bool = True
    ) -> httpx.Response:
        """POST a callback as WeCom would: inner XML encrypted into an outer XML, signed in the query."""
        inner = "<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()) + "</xml>"
        encrypt = (crypto or self.crypto).encrypt(inner)
        body = (
            f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName>"
            f"<Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[{AGENT}]]></AgentID></xml>"
        )
        stamp, nonce = str(int(time.time())), "1372623149"
        signature = reference_signature(TOKEN, stamp, nonce, encrypt) if sign else "0" * 40
        query = {"msg_signature": signature, "timestamp": stamp, "nonce": nonce}
        return self.client.post(PATH, params=query, content=body.encode())

    def jobs(self) -> list[Job]:
        return self.live.app.store.list_jobs(source="wecom")

    @property
    def backend(self) -> InstrumentedBackend:
        return self.live.app.worker.backend  # type: ignore[return-value]


def image_message(msg_id: str, media_id: str = "media-1", user: str = USER) -> dict[str, str]:
    return {
        "ToUserName": CORP,
        "FromUserName": user,
        "CreateTime": str(int(time.time())),
        "MsgType": "image",
        "PicUrl": "http://127.0.0.1:1/not-used.jpg",
        "MediaId": media_id,
        "MsgId": msg_id,
        "AgentID": str(AGENT),
    }


def text_message(msg_id: str, text: str, user: str = USER) -> dict[str, str]:
    fields = image_message(msg_id, user=user)
    del fields["PicUrl"], fields["MediaId"]
    return {**fields, "MsgType": "text", "Content": text}


@pytest.fixture
def wecom(
    make_config: Callable[..., Config], backend_factory: Any, scan_bytes: Callable[..., bytes]
) -> Iterator[Harness]:
    with running_fake_wecom(CORP, SECRET) as fake:
        fake.media["media-1"] = (scan_bytes(), "image/jpeg")
        table = {
            "enabled": True,
            "corp_id": CORP,
            "agent_id": AGENT,
            "secret": SecretStr(SECRET),
            "token": SecretStr(TOKEN),
            "encoding_aes_key": SecretStr(AES_KEY),
            "api_base": fake.url,
            "callback_path": PATH,
        }
        config = make_config(watches=[], wecom=table)
        with running_service(config, backend_factory) as live, httpx.Client(base_url=live.base_url) as client:
            bot = next(s for s in live.app.sources if isinstance(s, WeComBot))
            bot.api.backoff_seconds = 0.01
            yield Harness(live, fake, bot, client, WeComCrypto(TOKEN, AES_KEY, CORP))


def test_url_verification_answers_the_decrypted_echostr(wecom: Harness) -> None:
    echostr = reference_seal(b"echo-4527911", prefix=b"R" * 16)
    query = {"timestamp": "1409659589", "nonce": "263014780", "echostr": echostr}
    good = wecom.client.get(
        PATH, params={**query, "msg_signature": reference_signature(TOKEN, *query.values())}
    )
    assert good.status_code == 200 and good.text == "echo-4527911"
    bad = wecom.client.get(PATH, params={**query, "msg_signature": "f" * 40})
    assert bad.status_code == 403 and "echo" not in bad.text


def test_photo_is_acknowledged_at_once_and_answered_with_its_text(wecom: Harness) -> None:
    wecom.backend.delay = 2.0  # a slow model must not delay the acknowledgement
    started = time.monotonic()
    response = wecom.post(image_message("7001"))
    assert time.monotonic() - started < 1.0
    assert response.status_code == 200 and response.text == ""
    wait_until(lambda: wecom.fake.texts_to(USER), timeout=30)
    (sent,) = wecom.fake.sent
    assert sent["msgtype"] == "text" and sent["agentid"] == AGENT and sent["touser"] == USER
    assert "图问档案馆" in sent["text"]["content"]
    (job,) = wecom.jobs()
    assert job.status == "done" and job.source_ref == USER and job.question == "这是什么？请简要描述。"


def test_a_retried_callback_makes_one_job_and_one_answer(wecom: Harness) -> None:
    first, again = wecom.post(image_message("7002")), wecom.post(image_message("7002"))
    assert first.status_code == again.status_code == 200
    wait_until(lambda: wecom.fake.texts_to(USER), timeout=30)
    time.sleep(0.5)  # give a wrongly scheduled second answer the chance to show up
    assert len(wecom.fake.sent) == 1 and len(wecom.jobs()) == 1 and wecom.fake.media_calls == 1


def test_text_after_a_photo_is_a_follow_up_with_history(wecom: Harness) -> None:
    wecom.post(image_message("7003"))
    wecom.post(text_message("7004", "上面写的是什么字？"))  # sent at once: must wait for the photo
    wait_until(lambda: len(wecom.fake.texts_to(USER)) == 2, timeout=30)
    photo, follow_up = sorted(wecom.jobs(), key=lambda job: job.id)
    assert follow_up.question == "上面写的是什么字？"
    assert follow_up.conversation_id == photo.conversation_id
    assert [turn["role"] for turn in follow_up.history] == ["user", "assistant"]
    assert "图问档案馆" in wecom.fake.texts_to(USER)[1]


def test_text_without_a_photo_asks_for_one(wecom: Harness) -> None:
    wecom.post(text_message("7005", "你好"))
    assert "照片" in str(wait_until(lambda: wecom.fake.texts_to(USER), timeout=10))
    assert wecom.jobs() == []


@pytest.mark.parametrize("errcode", [42001, -1])
def test_expired_token_is_renewed_and_busy_is_retried(wecom: Harness, errcode: int) -> None:
    wecom.fake.send_errors = [errcode]
    wecom.post(text_message("7006", "/help"))
    wait_until(lambda: wecom.fake.texts_to(USER), timeout=10)
    assert wecom.fake.token_calls == (2 if errcode == 42001 else 1)
    assert wecom.fake.send_calls == 2


def test_long_answers_are_split_at_2048_bytes(wecom: Harness) -> None:
    backend = wecom.backend
    short_answer = backend.answer

    def long_answer(request: Request) -> Answer:
        answer = short_answer(request)
        answer.text = "\n".join([answer.text] * 120)  # well past 2048 bytes
        return answer

    backend.answer = long_answer  # type: ignore[method-assign]
    wecom.post(image_message("7007"))
    wait_until(lambda: wecom.jobs() and wecom.jobs()[0].status == "done", timeout=30)
    expected = "".join(wecom.jobs()[0].answer.split())  # type: ignore[union-attr]
    wait_until(lambda: "".join("".join(wecom.fake.texts_to(USER)).split()) == expected, timeout=10)
    parts = wecom.fake.texts_to(USER)
    assert len(parts) >= 2 and max(len(part.encode()) for part in parts) <= 2048


@pytest.mark.parametrize("attack", ["signature", "corp_id"])
def test_forged_callbacks_are_refused_and_not_processed(wecom: Harness, attack: str) -> None:
    other_corp = WeComCrypto(TOKEN, AES_KEY, "wwintruder")
    if attack == "signature":
        response = wecom.post(image_message("7008"), sign=False)
    else:
        response = wecom.post(image_message("7008"), crypto=other_corp)
    assert response.status_code == 403
    time.sleep(0.3)
    assert wecom.fake.media_calls == 0 and wecom.fake.sent == [] and wecom.jobs() == []


def test_rejected_secret_is_logged_once_and_callbacks_still_answer(
    wecom: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    wecom.fake.secret = "rotated-by-an-admin"
    with caplog.at_level(logging.INFO, logger="tuwen.bots"):
        assert wecom.post(image_message("7009")).status_code == 200
        wait_until(lambda: wecom.fake.token_calls >= 1, timeout=10)
        wait_until(lambda: any("40001" in r.getMessage() for r in caplog.records), timeout=10)
        assert wecom.post(image_message("7010")).status_code == 200
        time.sleep(0.3)
    assert wecom.fake.token_calls == 1 and wecom.fake.sent == [] and wecom.jobs() == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "企业微信" in errors[0] and "credentials" in errors[0]
    assert all(SECRET not in r.getMessage() and AES_KEY not in r.getMessage() for r in caplog.records)


def test_incomplete_config_refuses_to_start(make_config: Callable[..., Config]) -> None:
    config = make_config(watches=[], wecom={"enabled": True, "corp_id": CORP, "token": SecretStr(TOKEN)})
    bot = WeComBot(config, queue=None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="encoding_aes_key"):
        bot.start()


@pytest.mark.parametrize(
    ("media", "reply"),
    [
        (None, "无法下载这张图片"),  # WeCom answers errcode 40007 (unknown or expired media id)
        ((b"<html>proxy error</html>", "text/html"), "不是图片"),
        ((b"\xff\xd8\xff" + b"0" * 5000, "image/jpeg"), "文件太大"),
    ],
)
def test_photos_that_cannot_be_fetched_get_a_reply(
    wecom: Harness, media: tuple[bytes, str] | None, reply: str
) -> None:
    wecom.bot.api.max_media_bytes = 4096
    wecom.fake.media.pop("media-1")
    wecom.fake.media.update({"media-1": media} if media else {})
    wecom.post(image_message("7011"))
    assert reply in wait_until(lambda: wecom.fake.texts_to(USER), timeout=10)[0]  # type: ignore[index]
    assert wecom.jobs() == []


def test_unreachable_api_is_logged_once_then_recovery_once(
    wecom: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    wecom.fake.send_errors = [-1] * (wecom.bot.api.attempts * 2)  # two messages' worth of "system busy"
    with caplog.at_level(logging.INFO, logger="tuwen.bots"):
        wecom.post(text_message("7012", "/help"))
        wecom.post(text_message("7013", "/help"))
        wait_until(lambda: wecom.fake.send_calls == wecom.bot.api.attempts * 2, timeout=10)
        wecom.post(text_message("7014", "/help"))
        wait_until(lambda: wecom.fake.texts_to(USER), timeout=10)
        wait_until(lambda: any("reachable again" in r.getMessage() for r in caplog.records), timeout=5)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cannot reach" in line for line in lines) == 1
    assert sum("reachable again" in line for line in lines) == 1
    assert len(wecom.fake.sent) == 1


def test_stop_cancels_work_in_hand_and_refuses_new_callbacks(wecom: Harness) -> None:
    wecom.backend.delay = 2.0
    wecom.post(image_message("7015"))
    wait_until(lambda: wecom.jobs(), timeout=10)
    started = time.monotonic()
    wecom.bot.stop()
    assert time.monotonic() - started < 1.5  # cancelled, not waited for
    assert not wecom.bot._tasks
    assert wecom.post(image_message("7016")).status_code == 503
    assert wecom.fake.sent == []
