"""A client for any OpenAI-compatible chat-completions server: vLLM, Ollama, llama.cpp, LM Studio, OpenAI.

Only `POST {base_url}/chat/completions` is used, so anything that speaks that one endpoint works. Transient
failures (connection errors, timeouts, 429, 5xx) are retried with exponential backoff; everything else becomes
a `BackendError` that names the server and the cause. The API key is sent as a header and never appears in
messages or logs.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image
from pydantic import SecretStr

from mmrag.errors import ConfigError, MmragError
from mmrag.vlm.images import image_to_data_url

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0
_ERROR_DETAIL_CHARS = 300


class BackendError(MmragError):
    """A chat server that failed, refused or answered nonsense; the message names the server and the cause."""

    def __init__(self, message: str, *, backend: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.backend = backend
        self.status_code = status_code


class OpenAICompatClient:
    """Sync, thread-safe client; at most `max_concurrency` requests are in flight across all threads."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 4,
        extra_body: dict | None = None,
        max_retry_after_s: float = 30.0,
    ) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"VLM base_url must look like 'http://localhost:8000/v1', got {base_url!r}")
        if not model.strip():
            raise ConfigError(f"VLM model name is empty for base_url {base_url!r}")
        if timeout_s <= 0:
            raise ConfigError(f"VLM timeout_s must be positive, got {timeout_s}")
        if max_retries < 0 or backoff_s < 0 or max_retry_after_s < 0:
            raise ConfigError("VLM max_retries, backoff_s and max_retry_after_s must not be negative")
        if max_concurrency < 1:
            raise ConfigError(f"VLM max_concurrency must be at least 1, got {max_concurrency}")

        self.base_url = base_url.strip().rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self.max_retry_after_s = max_retry_after_s
        self.extra_body = dict(extra_body or {})
        self._endpoint = f"{self.base_url}/chat/completions"
        # Credentials in the URL (http://user:pass@host) must not leak into messages either.
        shown_netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        shown_url = urlunsplit((parts.scheme, shown_netloc, parts.path, "", "")).rstrip("/")
        self.backend_label = f"model {model!r} at {shown_url}"

        headers = {"Accept": "application/json, text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._slots = threading.BoundedSemaphore(max_concurrency)

    def __repr__(self) -> str:
        return f"OpenAICompatClient({self.backend_label})"

    def __enter__(self) -> OpenAICompatClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra_body: dict | None = None,
    ) -> str:
        """The assistant's reply text (stripped). Raises BackendError on any failure."""
        body = self._request_body(messages, max_tokens, temperature, extra_body, stream=False)
        with self._slots:
            response = self._send(body, stream=False)
            return self._completion_text(response)

    def chat_stream(
        self,
        messages: list[dict],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra_body: dict | None = None,
    ) -> Iterator[str]:
        """Yield reply text pieces as the server sends them (SSE). Nothing is sent until iteration starts.

        Retries cover only the time before the first piece arrives; a stream that breaks later raises
        BackendError, since what was already yielded cannot be taken back.
        """
        body = self._request_body(messages, max_tokens, temperature, extra_body, stream=True)
        with self._slots:
            response = self._send(body, stream=True)
            try:
                yield from self._stream_pieces(response)
            finally:
                response.close()

    def _request_body(
        self,
        messages: list[dict],
        max_tokens: int | None,
        temperature: float | None,
        extra_body: dict | None,
        *,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self.extra_body,
            **(extra_body or {}),
            "model": self.model,
            "messages": messages,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if stream:
            body["stream"] = True
        return body

    def _send(self, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        """POST with retries; returns a response with a 2xx status (for streams: still open, body unread)."""
        try:
            content = json.dumps(body).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise BackendError(
                f"request for {self.backend_label} cannot be encoded as JSON: {exc}",
                backend=self.backend_label,
            ) from exc
        request_headers = {"Content-Type": "application/json"}
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                request = self._http.build_request(
                    "POST", self._endpoint, content=content, headers=request_headers
                )
                response = self._http.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                kind = _TIMEOUT_KINDS.get(type(exc), "timeout")
                final = f"{self.backend_label} timed out: no reply within {self.timeout_s:g} s ({kind})"
                status = None
            except httpx.ConnectError as exc:
                final = f"cannot reach {self.backend_label}: {_transport_cause(exc)}"
                status = None
            except httpx.TransportError as exc:  # the server dropped the connection, bad HTTP, ...
                final = f"connection to {self.backend_label} failed: {_transport_cause(exc)}"
                status = None
            else:
                if response.is_success:
                    return response
                if stream:
                    try:
                        response.read()  # the error body explains the status
                    except httpx.HTTPError:
                        pass
                    finally:
                        response.close()
                status = response.status_code
                detail = _server_error_detail(response)
                if not _is_retryable_status(status):
                    raise BackendError(
                        f"{self.backend_label} rejected the request: HTTP {status}: {detail}",
                        backend=self.backend_label,
                        status_code=status,
                    )
                final = f"{self.backend_label} failed: HTTP {status}: {detail}"
                retry_after = _retry_after_seconds(response.headers)
            if attempt == attempts:
                raise BackendError(
                    f"{final} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})",
                    backend=self.backend_label,
                    status_code=status,
                )
            delay = self._retry_delay(attempt, retry_after)
            logger.warning("%s; retrying in %.2f s (attempt %d of %d)", final, delay, attempt + 1, attempts)
            time.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        # Jitter keeps a batch of workers that failed together from retrying in lockstep.
        backoff = min(self.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
        return backoff * (1.0 + random.uniform(0.0, 0.25))

    def _malformed(self, what: str) -> BackendError:
        return BackendError(f"malformed reply from {self.backend_label}: {what}", backend=self.backend_label)

    def _completion_text(self, response: httpx.Response) -> str:
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise self._malformed(f"not JSON: {_snippet(response.text)!r}") from None
        return self._message_content(payload)

    def _message_content(self, payload: Any) -> str:
        if not isinstance(payload, dict):
            raise self._malformed(f"expected a JSON object, got {type(payload).__name__}")
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            reason = _error_message(payload)
            raise self._malformed(f"no 'choices' in the reply{f' (server said: {reason})' if reason else ''}")
        choice = choices[0]
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise self._malformed(
                f"choices[0].message.content is {type(content).__name__}, not text "
                f"(finish_reason={choice.get('finish_reason')!r})"
            )
        if not content.strip():
            raise self._malformed(f"empty content (finish_reason={choice.get('finish_reason')!r})")
        return content.strip()

    def _stream_pieces(self, response: httpx.Response) -> Iterator[str]:
        if response.headers.get("content-type", "").startswith("application/json"):
            # Some servers ignore "stream": true and answer in one piece.
            response.read()
            yield self._completion_text(response)
            return
        yielded_any = False
        finish_reason: str | None = None
        try:
            for data in _sse_data(response.iter_lines()):
                if data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    raise self._malformed(f"stream chunk is not JSON: {_snippet(data)!r}") from None
                if not isinstance(chunk, dict):
                    raise self._malformed(f"stream chunk is {type(chunk).__name__}, not a JSON object")
                if "error" in chunk:
                    raise BackendError(
                        f"{self.backend_label} failed mid-stream: {_error_message(chunk)}",
                        backend=self.backend_label,
                    )
                choices = chunk.get("choices")
                if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                    continue  # e.g. the usage-only chunk at the end of an OpenAI stream
                finish_reason = choices[0].get("finish_reason") or finish_reason
                delta = choices[0].get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else None
                if piece is not None and not isinstance(piece, str):
                    raise self._malformed(f"choices[0].delta.content is {type(piece).__name__}, not text")
                if piece:
                    yielded_any = True
                    yield piece
            else:
                if finish_reason is None:
                    raise BackendError(
                        f"stream from {self.backend_label} ended before 'data: [DONE]'",
                        backend=self.backend_label,
                    )
        except httpx.TimeoutException:
            raise BackendError(
                f"{self.backend_label} timed out mid-stream: nothing for {self.timeout_s:g} s",
                backend=self.backend_label,
            ) from None
        except httpx.TransportError as exc:
            raise BackendError(
                f"connection to {self.backend_label} broke mid-stream: {_transport_cause(exc)}",
                backend=self.backend_label,
            ) from None
        if not yielded_any:
            raise self._malformed(f"empty content (finish_reason={finish_reason!r})")


class _ServerSettings(Protocol):
    """The fields CaptionSettings and GenerateSettings share for an OpenAI-compatible server."""

    base_url: str
    model: str
    api_key: SecretStr | None
    timeout_s: float
    max_retries: int


def client_from_settings(cfg: _ServerSettings, max_concurrency: int) -> OpenAICompatClient:
    return OpenAICompatClient(
        cfg.base_url,
        cfg.model,
        api_key=cfg.api_key.get_secret_value() if cfg.api_key else None,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        max_concurrency=max_concurrency,
    )


def user_message(
    text: str, images: Sequence[Image.Image] = (), *, max_side: int = 1024, max_bytes: int | None = None
) -> dict:
    """A user turn with text first, then one JPEG data-URL part per image."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for image in images:
        url = image_to_data_url(image, max_side=max_side, max_bytes=max_bytes)
        content.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": "user", "content": content}


def system_message(text: str) -> dict:
    return {"role": "system", "content": text}


_TIMEOUT_KINDS: dict[type[Exception], str] = {
    httpx.ConnectTimeout: "connect timeout",
    httpx.ReadTimeout: "read timeout",
    httpx.WriteTimeout: "write timeout",
    httpx.PoolTimeout: "timeout waiting for a free connection",
}


def _is_retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _transport_cause(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return f"connection refused ({text})"
    return text


def _retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Seconds the server asked for: Retry-After (seconds or HTTP date) or OpenAI's retry-after-ms."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _server_error_detail(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, Ollama's {"error": "..."}, or the body."""
    try:
        body = response.text
    except httpx.ResponseNotRead:  # a stream whose error body could not be read
        return response.reason_phrase or "no details"
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        payload = None
    return _error_message(payload) or _snippet(body) or response.reason_phrase or "no details"


def _error_message(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    error = payload.get("error")
    if isinstance(error, dict):
        error = error.get("message") or error.get("msg") or json.dumps(error)
    if isinstance(error, str) and error.strip():
        return _snippet(error)
    for key in ("detail", "message"):  # FastAPI-style servers and some proxies
        value = payload.get(key)
        if value:
            return _snippet(value if isinstance(value, str) else json.dumps(value))
    return ""


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_DETAIL_CHARS else text[:_ERROR_DETAIL_CHARS] + "..."


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The data of each server-sent event; multi-line data fields joined with newlines, per the SSE spec."""
    pending: list[str] = []
    for line in lines:
        if not line:
            if pending:
                yield "\n".join(pending)
                pending = []
            continue
        if line.startswith(":"):
            continue  # keep-alive comment
        field, _, value = line.partition(":")
        if field == "data":
            pending.append(value[1:] if value.startswith(" ") else value)
    if pending:
        yield "\n".join(pending)
