"""OpenAICompatClient and image_to_data_url against a real stub server process on loopback."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import TYPE_CHECKING

import httpx
import pytest
from openai_stub_server import STUB_API_ERROR
from PIL import Image
from skimage import data

from mmrag.errors import ConfigError, MmragError
from mmrag.vlm import BackendError, OpenAICompatClient, image_to_data_url, user_message
from mmrag.vlm.openai_client import _retry_after_seconds

if TYPE_CHECKING:
    from conftest_openai import StubServer

pytest_plugins = ["conftest_openai"]

CHELSEA = Image.fromarray(data.chelsea())  # 451 x 300 cat photo
ASTRONAUT = Image.fromarray(data.astronaut())  # 512 x 512
COFFEE = Image.fromarray(data.coffee())  # 600 x 400


def make_client(stub: StubServer, model: str, **overrides: object) -> OpenAICompatClient:
    options: dict = {"timeout_s": 5.0, "max_retries": 2, "backoff_s": 0.01} | overrides
    return OpenAICompatClient(stub.base_url, model, **options)


def decode_data_url(url: str) -> bytes:
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    return base64.b64decode(url[len(prefix) :])


def sha8(payload: bytes) -> str:
    return hashlib.sha1(payload).hexdigest()[:8]


def header(record: dict, name: str) -> str | None:
    return next((v for k, v in record["headers"].items() if k.lower() == name.lower()), None)


def test_request_body_has_model_prompt_and_one_downscaled_jpeg_per_photo(openai_stub: StubServer) -> None:
    model = openai_stub.unique("echo")
    prompt = "What is in these photos?"
    with make_client(openai_stub, model) as client:
        reply = client.chat(
            [user_message(prompt, [CHELSEA, ASTRONAUT], max_side=256)], max_tokens=50, temperature=0.2
        )

    [record] = openai_stub.records(model)
    assert record["path"] == "/v1/chat/completions"
    body = record["body"]
    assert set(body) == {"model", "messages", "max_tokens", "temperature"}
    assert body["model"] == model and body["max_tokens"] == 50 and body["temperature"] == 0.2
    [message] = body["messages"]
    assert message["role"] == "user"
    text_part, *image_parts = message["content"]
    assert text_part == {"type": "text", "text": prompt}
    assert [part["type"] for part in image_parts] == ["image_url", "image_url"]
    sent = [decode_data_url(part["image_url"]["url"]) for part in image_parts]
    decoded = [Image.open(io.BytesIO(payload)) for payload in sent]
    assert [im.format for im in decoded] == ["JPEG", "JPEG"]
    assert [im.size for im in decoded] == [(256, 170), (256, 256)]  # longest side 256, aspect kept

    expected = [decode_data_url(image_to_data_url(im, max_side=256)) for im in (CHELSEA, ASTRONAUT)]
    assert reply == f"images=2 sha1={sha8(expected[0])},{sha8(expected[1])} text={prompt}"


def test_authorization_header_only_when_a_key_is_set(openai_stub: StubServer) -> None:
    model = openai_stub.unique("echo")
    with make_client(openai_stub, model, api_key="sk-stub-secret-123") as client:
        client.chat([user_message("hi")])
    with make_client(openai_stub, model) as client:
        client.chat([user_message("hi")])

    with_key, without_key = openai_stub.records(model)
    assert header(with_key, "Authorization") == "Bearer sk-stub-secret-123"
    assert header(without_key, "Authorization") is None
    assert header(with_key, "Content-Type") == "application/json"


def test_trailing_slash_and_extra_body(openai_stub: StubServer) -> None:
    model = openai_stub.unique("echo")
    client = OpenAICompatClient(
        openai_stub.base_url + "/", model, extra_body={"top_p": 0.5, "model": "ignored"}
    )
    try:
        client.chat([user_message("hi")], extra_body={"seed": 7})
    finally:
        client.close()
    [record] = openai_stub.records(model)
    assert record["path"] == "/v1/chat/completions"
    assert record["body"]["top_p"] == 0.5 and record["body"]["seed"] == 7
    assert record["body"]["model"] == model


def test_retries_500_then_succeeds(openai_stub: StubServer) -> None:
    model = openai_stub.unique("fail-twice-500")
    with make_client(openai_stub, model, max_retries=3) as client:
        reply = client.chat([user_message("after two failures")])
    assert reply == "images=0 sha1=- text=after two failures"
    assert len(openai_stub.records(model)) == 3


def test_gives_up_on_persistent_503_with_server_message(openai_stub: StubServer) -> None:
    model = "always-503"
    before = len(openai_stub.records(model))
    with make_client(openai_stub, model, max_retries=2) as client, pytest.raises(BackendError) as caught:
        client.chat([user_message("hi")])
    message = str(caught.value)
    assert "HTTP 503" in message and "stub overloaded" in message
    assert openai_stub.base_url in message and "always-503" in message
    assert "3 attempts" in message
    assert caught.value.status_code == 503
    assert len(openai_stub.records(model)) - before == 3


def test_429_waits_for_retry_after(openai_stub: StubServer) -> None:
    model = openai_stub.unique("rate-limit-429")
    with make_client(openai_stub, model, max_retries=1, backoff_s=0.01) as client:
        assert client.chat([user_message("hi")]).startswith("images=0")
    first, second = openai_stub.records(model)
    # With backoff_s=0.01 only the server's "Retry-After: 1" explains a gap of a second.
    assert second["time"] - first["time"] >= 0.9


def test_retry_delay_caps_retry_after_and_grows_backoff() -> None:
    with OpenAICompatClient("http://127.0.0.1:9/v1", "m", backoff_s=0.5, max_retry_after_s=2.0) as client:
        assert client._retry_delay(1, retry_after=3600.0) == 2.0
        assert client._retry_delay(1, retry_after=0.25) == 0.25
        assert 0.5 <= client._retry_delay(1, retry_after=None) <= 0.625  # backoff plus at most 25 % jitter
        assert 2.0 <= client._retry_delay(3, retry_after=None) <= 2.5


def test_retry_after_header_forms() -> None:
    assert _retry_after_seconds(httpx.Headers({"Retry-After": "2"})) == 2.0
    assert _retry_after_seconds(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    in_a_minute = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=60), usegmt=True)
    assert 50 < (_retry_after_seconds(httpx.Headers({"Retry-After": in_a_minute})) or 0) <= 60
    assert _retry_after_seconds(httpx.Headers({"Retry-After": "soon"})) is None
    assert _retry_after_seconds(httpx.Headers({})) is None


def test_401_is_not_retried_and_keeps_the_key_secret(openai_stub: StubServer) -> None:
    model = openai_stub.unique("unauthorized-401")
    client = make_client(openai_stub, model, api_key="sk-stub-secret-123", max_retries=3)
    with client, pytest.raises(BackendError) as caught:
        client.chat([user_message("hi")])
    message = str(caught.value)
    assert STUB_API_ERROR in message and "HTTP 401" in message and openai_stub.base_url in message
    assert "sk-stub-secret-123" not in message and "sk-stub-secret-123" not in repr(client)
    assert caught.value.status_code == 401
    assert isinstance(caught.value, MmragError)
    assert len(openai_stub.records(model)) == 1


def test_timeout_is_retried_then_reported(openai_stub: StubServer) -> None:
    model = openai_stub.unique("slow:3")  # the server sleeps 3 s
    with (
        make_client(openai_stub, model, timeout_s=0.3, max_retries=1) as client,
        pytest.raises(BackendError) as caught,
    ):
        client.chat([user_message("hi")])
    message = str(caught.value)
    assert "timed out" in message and "0.3 s" in message and openai_stub.base_url in message
    assert len(openai_stub.records(model)) == 2


@pytest.mark.parametrize(
    ("behaviour", "cause"),
    [
        ("malformed-json", "not JSON"),
        ("no-choices", "no 'choices'"),
        ("empty-content", "empty content"),
        ("content-not-string", "not text"),
    ],
)
def test_malformed_replies_raise_backend_error(openai_stub: StubServer, behaviour: str, cause: str) -> None:
    model = openai_stub.unique(behaviour)
    with make_client(openai_stub, model) as client, pytest.raises(BackendError) as caught:
        client.chat([user_message("hi")])
    message = str(caught.value)
    assert message.startswith(f"malformed reply from model {model!r} at {openai_stub.base_url}")
    assert cause in message
    assert len(openai_stub.records(model)) == 1


def test_unreachable_server_names_the_url(closed_loopback_port: int) -> None:
    base_url = f"http://127.0.0.1:{closed_loopback_port}/v1"
    client = OpenAICompatClient(base_url, "any", max_retries=1, backoff_s=0.01)
    with client, pytest.raises(BackendError) as caught:
        client.chat([user_message("hi")])
    message = str(caught.value)
    assert base_url in message and "connection refused" in message.lower() and "2 attempts" in message


def test_stream_yields_chunks_in_order(openai_stub: StubServer) -> None:
    tag = uuid.uuid4().hex[:8]
    model = f"reply:the cat sat on the mat {tag}"
    with make_client(openai_stub, model) as client:
        pieces = list(client.chat_stream([user_message("story")], max_tokens=20))
    assert pieces == ["the ", "cat ", "sat ", "on ", "the ", "mat ", tag]
    [record] = openai_stub.records(model)
    assert record["body"]["stream"] is True and record["body"]["max_tokens"] == 20


def test_stream_echo_sees_the_image(openai_stub: StubServer) -> None:
    model = openai_stub.unique("echo")
    with make_client(openai_stub, model) as client:
        reply = "".join(client.chat_stream([user_message("look", [COFFEE])]))
    expected = decode_data_url(image_to_data_url(COFFEE))
    assert reply == f"images=1 sha1={sha8(expected)} text=look"


def test_truncated_stream_raises(openai_stub: StubServer) -> None:
    model = openai_stub.unique("stream-truncated")
    pieces: list[str] = []
    with (
        make_client(openai_stub, model) as client,
        pytest.raises(BackendError, match=r"ended before 'data: \[DONE\]'"),
    ):
        pieces.extend(client.chat_stream([user_message("hi")]))
    assert pieces == ["only ", "half "]


def test_stream_401_is_not_retried(openai_stub: StubServer) -> None:
    model = openai_stub.unique("unauthorized-401")
    with make_client(openai_stub, model) as client, pytest.raises(BackendError, match="HTTP 401"):
        list(client.chat_stream([user_message("hi")]))
    assert len(openai_stub.records(model)) == 1


@pytest.mark.parametrize("bad", ["localhost:8000/v1", "ftp://host/v1", ""])
def test_bad_base_url_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        OpenAICompatClient(bad, "model")


def test_credentials_in_url_are_not_shown() -> None:
    client = OpenAICompatClient("http://user:hunter2@127.0.0.1:9/v1", "m")
    try:
        assert "hunter2" not in client.backend_label and "127.0.0.1:9/v1" in client.backend_label
    finally:
        client.close()


def test_data_url_respects_max_side_and_never_enlarges() -> None:
    def size_of(url: str) -> tuple[int, int]:
        return Image.open(io.BytesIO(decode_data_url(url))).size

    assert size_of(image_to_data_url(CHELSEA, max_side=100)) == (100, 67)
    assert size_of(image_to_data_url(ASTRONAUT, max_side=100)) == (100, 100)
    assert size_of(image_to_data_url(CHELSEA, max_side=2000)) == (451, 300)
    portrait = CHELSEA.transpose(Image.Transpose.ROTATE_90)
    assert size_of(image_to_data_url(portrait, max_side=150)) == (100, 150)


def test_data_url_respects_max_bytes() -> None:
    unlimited = decode_data_url(image_to_data_url(COFFEE))
    limit = len(unlimited) // 8
    limited = decode_data_url(image_to_data_url(COFFEE, max_bytes=limit))
    assert len(limited) <= limit < len(unlimited)
    image = Image.open(io.BytesIO(limited))
    assert image.format == "JPEG" and abs(image.width / image.height - 1.5) < 0.05
    with pytest.raises(ConfigError, match="max_bytes=50"):
        image_to_data_url(COFFEE, max_bytes=50)


def test_data_url_flattens_transparency_and_grayscale() -> None:
    rgba = ASTRONAUT.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: a viewer shows the white background
    pixels = Image.open(io.BytesIO(decode_data_url(image_to_data_url(rgba, max_side=64))))
    assert pixels.mode == "RGB" and min(pixels.getextrema()[0]) > 240

    camera = Image.fromarray(data.camera())  # 8-bit grayscale photo
    assert Image.open(io.BytesIO(decode_data_url(image_to_data_url(camera, max_side=64)))).mode == "RGB"
    assert image_to_data_url(camera, fmt="PNG", max_side=64).startswith("data:image/png;base64,")
    with pytest.raises(ConfigError, match="GIF"):
        image_to_data_url(camera, fmt="GIF")
