"""OpenAICaptioner against a real stub server process on loopback, with real photos."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import TYPE_CHECKING

import pytest
from PIL import Image
from skimage import data

from mmrag.caption.base import CAPTION_PROMPT, Captioner
from mmrag.caption.openai_captioner import OpenAICaptioner, clean_caption
from mmrag.vlm import OpenAICompatClient, image_to_data_url

if TYPE_CHECKING:
    from conftest_openai import StubServer

pytest_plugins = ["conftest_openai"]

PHOTOS = [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
GRAY_PHOTOS = [
    Image.fromarray(getattr(data, name)()) for name in ("camera", "coins", "moon", "clock", "rocket")
]


def sha8_as_sent(image: Image.Image) -> str:
    """The hash the stub reports for this image when the captioner sends it at its default size."""
    url = image_to_data_url(image)
    return hashlib.sha1(base64.b64decode(url.split(",", 1)[1])).hexdigest()[:8]


def make_captioner(stub: StubServer, model: str, **client_options: object) -> OpenAICaptioner:
    options: dict = {"timeout_s": 5.0, "max_retries": 1, "backoff_s": 0.01} | client_options
    return OpenAICaptioner(OpenAICompatClient(stub.base_url, model, **options))


def test_batch_captions_in_input_order_with_the_prompt(openai_stub: StubServer) -> None:
    model = openai_stub.unique("echo")
    captioner = make_captioner(openai_stub, model, max_concurrency=3)
    assert isinstance(captioner, Captioner)

    results = captioner.caption(PHOTOS)

    assert all(r.ok for r in results)
    for photo, result in zip(PHOTOS, results, strict=True):
        assert result.text == f"images=1 sha1={sha8_as_sent(photo)} text={CAPTION_PROMPT[:40]}"
    records = openai_stub.records(model)
    assert len(records) == len(PHOTOS)
    for record in records:
        body = record["body"]
        assert body["max_tokens"] == 120 and body["temperature"] == 0.0
        [message] = body["messages"]
        assert message["content"][0] == {"type": "text", "text": CAPTION_PROMPT}
        assert len(message["content"]) == 2
        assert message["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_one_failing_image_does_not_fail_the_batch(openai_stub: StubServer) -> None:
    rejected = sha8_as_sent(PHOTOS[1])
    captioner = make_captioner(openai_stub, f"reject-image:{rejected}")

    results = captioner.caption(PHOTOS)

    assert [r.ok for r in results] == [True, False, True]
    assert results[0].text is not None and sha8_as_sent(PHOTOS[0]) in results[0].text
    assert results[2].text is not None and sha8_as_sent(PHOTOS[2]) in results[2].text
    assert results[1].text is None
    assert results[1].error is not None
    assert f"stub rejects image {rejected}" in results[1].error and "HTTP 400" in results[1].error


def test_at_most_max_concurrency_requests_in_flight(openai_stub: StubServer) -> None:
    model = openai_stub.unique("slow:0.3")
    images = PHOTOS + GRAY_PHOTOS
    assert len(images) == 8
    captioner = make_captioner(openai_stub, model, max_concurrency=2)

    results = captioner.caption(images)

    assert [r.ok for r in results] == [True] * 8
    assert [r.text.split()[1] for r in results if r.text] == [f"sha1={sha8_as_sent(im)}" for im in images]
    in_flight = [record["in_flight"] for record in openai_stub.records(model)]
    assert len(in_flight) == 8
    # The server counts requests of this model in flight when each one arrives; 0.3 s each makes them overlap.
    assert max(in_flight) == 2


def test_unreachable_server_gives_every_image_an_error(closed_loopback_port: int) -> None:
    client = OpenAICompatClient(
        f"http://127.0.0.1:{closed_loopback_port}/v1", "m", max_retries=1, backoff_s=0.01
    )
    results = OpenAICaptioner(client).caption(PHOTOS)
    assert [r.ok for r in results] == [False, False, False]
    for result in results:
        assert result.error is not None
        assert "connection refused" in result.error.lower() and str(closed_loopback_port) in result.error


def test_boilerplate_is_trimmed_from_server_replies(openai_stub: StubServer) -> None:
    model = "reply:  This image shows   a tabby cat lying on a\nrug.  "
    [result] = make_captioner(openai_stub, model).caption(PHOTOS[1:2])
    assert result.text == "A tabby cat lying on a rug."


def test_empty_batch_sends_nothing(openai_stub: StubServer) -> None:
    model = openai_stub.unique("echo")
    assert make_captioner(openai_stub, model).caption([]) == []
    assert openai_stub.records(model) == []


def test_bad_image_becomes_that_images_error(openai_stub: StubServer) -> None:
    model = openai_stub.unique("echo")
    empty = Image.new("RGB", (0, 5))
    results = make_captioner(openai_stub, model).caption([PHOTOS[0], empty])
    assert results[0].ok
    assert results[1].error is not None and "empty image" in results[1].error
    assert len(openai_stub.records(model)) == 1


@pytest.mark.parametrize(
    ("reply", "caption"),
    [
        ("This image shows a cat on a rug.", "A cat on a rug."),
        ("The photograph depicts: an astronaut in a white suit", "An astronaut in a white suit"),
        ("In this picture, a cup of coffee on a saucer.", "A cup of coffee on a saucer."),
        ('Caption: "A rocket on the launch pad."', "A rocket on the launch pad."),
        ("**This image shows a grey cat.**", "A grey cat."),
        (
            "<think>The user wants a caption.\nLet me look.</think>\nA man with a camera.",
            "A man with a camera.",
        ),
        ("The image quality is low; a blurry street.", "The image quality is low; a blurry street."),
        ("A chart of sales by month.", "A chart of sales by month."),
        ("This image shows", "This image shows"),
    ],
)
def test_clean_caption(reply: str, caption: str) -> None:
    assert clean_caption(reply) == caption


def test_captioner_id_names_model_host_and_prompt() -> None:
    client = OpenAICompatClient("http://gpu-box:8000/v1/", "Qwen/Qwen2.5-VL-7B-Instruct")
    try:
        default = OpenAICaptioner(client)
        prompt_hash = hashlib.sha1(CAPTION_PROMPT.encode()).hexdigest()[:8]
        assert default.captioner_id == f"openai:Qwen/Qwen2.5-VL-7B-Instruct@gpu-box:8000#{prompt_hash}"
        assert OpenAICaptioner(client).captioner_id == default.captioner_id
        other_prompt = OpenAICaptioner(client, prompt=f"Caption this. {uuid.uuid4()}")
        assert other_prompt.captioner_id != default.captioner_id
    finally:
        client.close()
