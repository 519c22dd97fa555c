"""A scripted OpenAI-compatible chat-completions server for tests, run as its own process on loopback.

    python tests/openai_stub_server.py --port 0 --record requests.jsonl

prints "LISTENING <host> <port>" once it accepts connections. Every request is appended to the record file as
one JSON line (method, path, headers, body, in_flight = requests of the same model in flight on arrival).

The model name picks the behaviour, "<behaviour>[:<argument>]"; the whole model string keys any per-model
state, so a test that adds a unique tag gets a fresh script:

    echo (or any other name)  200, content "images=N sha1=<8 hex>,... text=<first 40 chars of the text>"
                              where each sha1 is of one image's decoded bytes
    reply:<text>              200 with exactly <text> as the content
    tagged-reply:<tag>:<text> the same, <tag> only makes the model string unique (StubServer.unique)
    slow:<seconds>[:<tag>]    sleep, then echo
    fail-twice-500:<tag>      500 for the first two requests of this model string, then echo
    always-503                503 every time
    rate-limit-429:<tag>      429 with "Retry-After: 1" for the first request, then echo
    unauthorized-401          401 with an OpenAI-style error body
    reject-image:<8 hex>      400 when any image's sha1 starts with <8 hex>, else echo
    malformed-json            200 with a body that is not JSON
    no-choices                200 JSON without "choices"
    empty-content             200 with whitespace content
    content-not-string        200 with a list as the content
    stream-truncated          an SSE stream cut off before "data: [DONE]"

"stream": true in the body makes any echo/reply answer an SSE stream, one word per chunk.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STUB_API_ERROR = "Incorrect API key provided. You can find your API key at the stub dashboard."


class StubState:
    def __init__(self, record_path: str) -> None:
        self.lock = threading.Lock()
        self.record_file = open(record_path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the server
        self.calls_by_model: defaultdict[str, int] = defaultdict(int)
        self.in_flight_by_model: defaultdict[str, int] = defaultdict(int)

    def arrive(self, model: str, record: dict[str, Any]) -> int:
        """Count the request in and record it; returns how many calls of this model came before it."""
        with self.lock:
            self.in_flight_by_model[model] += 1
            record["in_flight"] = self.in_flight_by_model[model]
            previous_calls = self.calls_by_model[model]
            self.calls_by_model[model] += 1
            self.record_file.write(json.dumps(record) + "\n")
            self.record_file.flush()
            return previous_calls

    def leave(self, model: str) -> None:
        with self.lock:
            self.in_flight_by_model[model] -= 1


def image_hashes(body: dict[str, Any]) -> list[str]:
    """sha1[:8] of each image's decoded bytes, in message order."""
    hashes = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part["image_url"]["url"]
                payload = url.split(",", 1)[1]
                hashes.append(hashlib.sha1(base64.b64decode(payload)).hexdigest()[:8])
    return hashes


def first_text(body: dict[str, Any]) -> str:
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            return content
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "text":
                return str(part.get("text", ""))
    return ""


def echo_content(body: dict[str, Any]) -> str:
    hashes = image_hashes(body)
    return f"images={len(hashes)} sha1={','.join(hashes) or '-'} text={first_text(body)[:40]}"


class StubHandler(BaseHTTPRequestHandler):
    server_version = "openai-stub/1"
    protocol_version = "HTTP/1.1"
    state: StubState  # set on the class by serve()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = {"unparsed": raw[:200].decode("utf-8", "replace")}
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        record = {
            "time": time.time(),
            "method": "POST",
            "path": self.path,
            "headers": dict(self.headers),
            "body": body,
        }
        previous_calls = self.state.arrive(model, record)
        try:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            else:
                self.respond(model, body, previous_calls)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)
        finally:
            self.state.leave(model)

    def respond(self, model: str, body: dict[str, Any], previous_calls: int) -> None:
        behaviour, _, argument = model.partition(":")
        content: Any = None
        if behaviour == "reply":
            content = argument
        elif behaviour == "tagged-reply":
            content = argument.partition(":")[2]
        elif behaviour == "slow":
            time.sleep(float(argument.partition(":")[0]))
        elif behaviour == "fail-twice-500" and previous_calls < 2:
            return self.send_json(500, {"error": {"message": "stub internal error", "type": "server_error"}})
        elif behaviour == "always-503":
            return self.send_json(503, {"error": {"message": "stub overloaded", "type": "server_error"}})
        elif behaviour == "rate-limit-429" and previous_calls < 1:
            error = {"error": {"message": "Rate limit reached", "type": "rate_limit"}}
            return self.send_json(429, error, extra_headers={"Retry-After": "1"})
        elif behaviour == "unauthorized-401":
            error = {
                "error": {
                    "message": STUB_API_ERROR,
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
            return self.send_json(401, error)
        elif behaviour == "reject-image" and any(h.startswith(argument) for h in image_hashes(body)):
            return self.send_json(
                400, {"error": {"message": f"stub rejects image {argument}", "type": "bad_image"}}
            )
        elif behaviour == "malformed-json":
            return self.send_raw(200, b"{'choices': oops", "application/json")
        elif behaviour == "no-choices":
            return self.send_json(200, {"id": "chatcmpl-stub", "object": "chat.completion", "model": model})
        elif behaviour == "empty-content":
            content = "  \n "
        elif behaviour == "content-not-string":
            content = [{"type": "text", "text": "a list, not a string"}]
        elif behaviour == "stream-truncated":
            return self.send_stream(["only ", "half "], finish=False)

        if content is None:
            content = echo_content(body)
        if body.get("stream") and isinstance(content, str):
            words = content.split(" ")
            return self.send_stream([w + " " for w in words[:-1]] + [words[-1]], finish=True)
        reply = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        self.send_json(200, reply)

    def send_json(self, status: int, payload: Any, extra_headers: dict[str, str] | None = None) -> None:
        self.send_raw(status, json.dumps(payload).encode("utf-8"), "application/json", extra_headers)

    def send_raw(
        self, status: int, data: bytes, content_type: str, extra_headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, pieces: list[str], *, finish: bool) -> None:
        """OpenAI's shape: a role-only chunk, content chunks, a finish chunk, [DONE]; no Content-Length."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            payload = {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        self.wfile.write(b": keep-alive\n\n" + chunk({"role": "assistant"}))
        for piece in pieces:
            self.wfile.write(chunk({"content": piece}))
            self.wfile.flush()
        if finish:
            self.wfile.write(chunk({}, "stop") + b"data: [DONE]\n\n")
        self.wfile.flush()


def serve(host: str, port: int, record_path: str) -> None:
    StubHandler.state = StubState(record_path)
    server = ThreadingHTTPServer((host, port), StubHandler)
    server.daemon_threads = True
    print(f"LISTENING {host} {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--record", required=True, help="JSONL file that gets one line per request")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
