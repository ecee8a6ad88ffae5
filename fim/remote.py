"""A remote engine: the engine contract (`codegemma.EngineProtocol`) over an OpenAI-compatible `/v1/completions`.

fim/ still builds the prompt (multi-file context, FIM template, token budget), post-processes and cancels;
only the forward passes run elsewhere: another `codegemma serve` (its `/engine/v1` routes), vLLM, TGI,
SGLang or llama.cpp's server. The prompt goes as text (`fim.prompt_text`), or as token ids with
`prompt_format="tokens"` where the engine takes them (codegemma serve, vLLM, llama.cpp's server); the
completion streams back as server-sent events feeding `on_text`, and `should_stop` closes the stream, which
is how every such engine learns that a request was cancelled.

What the engine cannot tell over HTTP comes from the local model spec (`--model`, default the embedded
model): its tokenizer (token counts and the prompt budget are exact when it is the engine's model), its FIM
tokens and its context, which the engine's model list overrides where it says (`max_model_len`, as vLLM and
codegemma serve report it). Generated tokens are counted by re-encoding the text with that tokenizer.

Failures: connection refused, a 5xx/429 answer or no answer within the timeouts before any text arrived are
retried with exponential backoff; an engine that stops mid-stream, answers garbage or refuses the request
raises `RemoteEngineError` with one line. The API key comes from $CODEGEMMA_ENGINE_API_KEY and is sent only
in the Authorization header, never put in a message or a log line.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha256
from urllib.parse import urlsplit

from codegemma import GenerateOptions, Generation, GenStats
from codegemma.errors import PromptTooLongError
from codegemma.loader import load_info
from codegemma.tokenizer import Tokenizer

from fim.engine import engine_errors
from fim.errors import EngineError, RemoteEngineError
from fim.prompt_text import ids_to_text

API_KEY_ENV = "CODEGEMMA_ENGINE_API_KEY"
AFFINITY_HEADER = "X-Codegemma-Cache-Key"  # the digest of the file (cache key) a request completes in
# Where the completions live when the URL names only a server: a `codegemma serve` answers under /engine/v1
# (Tabby owns its /v1/completions), every other OpenAI-compatible engine under /v1.
_BASE_PATHS = ("/engine/v1", "/v1")
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_POLL_S = 0.02  # how often `should_stop` is checked while no stream event arrives


class _Retry(Exception):
    """A failure before any text arrived: worth another attempt."""


@dataclass(frozen=True)
class RemoteSettings:
    """Where the engine is and how patiently to talk to it (the model's facts come with its tokenizer)."""

    url: str  # http://host:port, or the base URL of the OpenAI API (http://host:8000/v1)
    served_model: str | None = None  # the `model` field sent; None = the first of the engine's model list
    prompt_format: str = "text"  # "text" (every engine) or "tokens" (codegemma serve, vLLM, llama.cpp server)
    connect_timeout_s: float = 3.0
    first_event_timeout_s: float = 60.0  # until the first stream event: a long prompt's prefill on a busy engine
    idle_timeout_s: float = 15.0  # between two stream events
    retries: int = 2  # further attempts after a failure before any text arrived
    backoff_s: float = 0.25  # before the first retry, doubled for each next one


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "..."


class RemoteEngine:
    """`EngineProtocol` over HTTP. Like the local engine, one generation at a time per instance (the
    completion service serialises); many instances, in many processes, may share one remote engine."""

    def __init__(self, settings: RemoteSettings, tokenizer: Tokenizer, model_name: str, max_seq_len: int) -> None:
        if settings.prompt_format not in ("text", "tokens"):
            raise EngineError(f"prompt format must be text or tokens, got {settings.prompt_format!r}")
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineError(f"remote engine URL must be http(s)://HOST[:PORT][/PATH], got {settings.url!r}")
        self.settings = settings
        self.tokenizer = tokenizer
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self.where = f"{parts.scheme}://{self._host}:{self._port}"  # never the URL's user:password part
        self._paths = (parts.path.rstrip("/"),) if parts.path.rstrip("/") else _BASE_PATHS
        self._base: str | None = None
        self._served: str | None = settings.served_model
        self._model_name = model_name
        self._max_seq_len = max_seq_len
        self.name = f"{model_name} @ {self.where}"
        self._api_key = os.environ.get(API_KEY_ENV) or None

    @property
    def supports_fim(self) -> bool:
        return self.tokenizer.has_fim

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    # --- HTTP ------------------------------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream", **(extra or {})}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _get_json(self, path: str) -> dict | None:
        """GET a small JSON document; None for a 404 (the path is not this engine's), _Retry when down."""
        connection = self._connection(self.settings.connect_timeout_s)
        try:
            connection.request("GET", path, headers=self._headers())
            response = connection.getresponse()
            body = response.read(1 << 20)
        except (OSError, http.client.HTTPException) as error:
            raise _Retry(f"cannot reach it ({_one_line(str(error) or type(error).__name__)})") from None
        finally:
            connection.close()
        if response.status == 404:
            return None
        self._check_status(response.status, body)
        try:
            document = json.loads(body)
        except ValueError:
            raise RemoteEngineError(f"remote engine {self.where}: GET {path} did not answer JSON") from None
        return document if isinstance(document, dict) else None

    def _check_status(self, status: int, body: bytes) -> None:
        if status < 300:
            return
        message = _error_message(body)
        if status in _RETRY_STATUSES:
            raise _Retry(f"HTTP {status}: {message}")
        if status in (401, 403):
            raise RemoteEngineError(f"remote engine {self.where} refused the request (HTTP {status}): set "
                                    f"{API_KEY_ENV} to its API key")
        raise RemoteEngineError(f"remote engine {self.where} refused the request (HTTP {status}): {message}")

    def _resolve(self) -> str:
        """The API base path, found (and the model list read) on first use, again after a failure."""
        if self._base is not None:
            return self._base
        for path in self._paths:
            listing = self._get_json(f"{path}/models")
            if listing is None and len(self._paths) > 1:
                continue
            models = [m for m in (listing or {}).get("data", []) if isinstance(m, dict)]
            if models:
                self._served = self._served or str(models[0].get("id", "")) or None
                context = models[0].get("max_model_len")
                if isinstance(context, int) and context > 0:
                    self._max_seq_len = context
            self._base = path
            return path
        raise RemoteEngineError(f"remote engine {self.where}: no OpenAI-compatible API at "
                                f"{' or '.join(self._paths)} (GET .../models answered 404)")

    def probe(self) -> None:
        """Find the API and read the model list now (at startup), so that the context is known before the
        first prompt is built; an engine that is down now is looked for again by the first request."""
        try:
            self._resolve()
        except _Retry:
            pass

    # --- generation ------------------------------------------------------------------------------

    def generate(self, prompt: Sequence[int], options: GenerateOptions = GenerateOptions(), *,
                 on_text: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 draft_sources: Sequence[Sequence[int]] = ()) -> Generation:
        """Generate on the remote engine (drafts are the engine's business: `draft_sources` is unused)."""
        with engine_errors():
            self.tokenizer.check_ids(prompt)
            if len(prompt) >= self._max_seq_len:
                raise PromptTooLongError(f"prompt has {len(prompt)} tokens; this engine's context is "
                                         f"{self._max_seq_len}")
        stopped = should_stop or (lambda: False)
        delay = self.settings.backoff_s
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._attempt(prompt, options, on_text, stopped)
            except _Retry as error:
                if attempts > self.settings.retries:
                    raise RemoteEngineError(f"remote engine {self.where} is unavailable after "
                                            f"{attempts} attempts: {error}") from None
            until = time.monotonic() + delay
            while time.monotonic() < until:
                if stopped():
                    return Generation([], "", "cancelled", GenStats(prompt_tokens=len(prompt)))
                time.sleep(_POLL_S)
            delay *= 2

    def _body(self, prompt: Sequence[int], options: GenerateOptions) -> dict:
        stops = list(options.stop_strings)
        # the engine stops on its model's end of sequence; the FIM tokens end a middle too
        stops += [self.tokenizer.id_to_piece(i) for i in sorted(self.tokenizer.stop_ids - {self.tokenizer.eos_id})
                  if options.stop_ids is None]
        body: dict = {"prompt": list(prompt) if self.settings.prompt_format == "tokens"
                      else ids_to_text(self.tokenizer, prompt),
                      "max_tokens": options.max_new_tokens, "temperature": options.temperature,
                      "top_p": options.top_p, "stream": True}
        if self._served:
            body["model"] = self._served
        if stops:
            body["stop"] = stops
        if options.top_k:
            body["top_k"] = options.top_k
        if options.seed is not None:
            body["seed"] = options.seed
        if options.cache_key:
            # A digest, not the file path: engines use `user` for the prompt-cache slot (codegemma serve)
            # and a load balancer may hash on it, neither needs the name.
            body["user"] = sha256(options.cache_key.encode()).hexdigest()[:16]
        return body

    def _attempt(self, prompt: Sequence[int], options: GenerateOptions, on_text: Callable[[str], None] | None,
                 stopped: Callable[[], bool]) -> Generation:
        started = time.perf_counter()
        base = self._resolve()
        body = self._body(prompt, options)
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if "user" in body:
            headers[AFFINITY_HEADER] = body["user"]  # for a load balancer that keeps a file on one replica
        connection = self._connection(self.settings.connect_timeout_s)
        reader = _EventReader(connection, f"{base}/completions", payload, self._headers(headers), self._check_status)
        stats = GenStats(prompt_tokens=len(prompt), forward_passes=1)
        text, reason, finish = "", "max_tokens", None
        try:
            for event in reader.events(stopped, options.deadline, self.settings.first_event_timeout_s,
                                       self.settings.idle_timeout_s):
                if event is None:  # cancelled or past the deadline
                    reason = "cancelled" if stopped() else "deadline"
                    break
                piece, finish = self._choice(event)
                if piece:
                    if not text:
                        stats.ttft_s = time.perf_counter() - started
                    text += piece
                    if on_text is not None:
                        on_text(piece)
                if finish:
                    break
        except _Retry as error:
            if text:  # text went out already: it cannot be taken back, so no retry
                raise RemoteEngineError(f"remote engine {self.where} failed mid-completion: {error}") from None
            raise
        finally:
            reader.close()
        if finish is not None:
            reason = "max_tokens" if finish == "length" else "eos"
        elif reason == "max_tokens" and not reader.finished:
            raise RemoteEngineError(f"remote engine {self.where} closed the stream before the completion ended")
        tokens = self.tokenizer.encode(text)  # the engine's tokens are not in the stream: counted again here
        stats.new_tokens = len(tokens)
        stats.total_s = time.perf_counter() - started
        stats.decode_s = stats.total_s - stats.ttft_s
        return Generation(tokens, text, reason, stats)

    def _choice(self, event: dict) -> tuple[str, str | None]:
        choices = event.get("choices")
        if "error" in event and not choices:
            raise RemoteEngineError(f"remote engine {self.where}: {_error_message(json.dumps(event).encode())}")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise RemoteEngineError(f"remote engine {self.where} answered something that is not a completion: "
                                    f"{_one_line(json.dumps(event), 120)}")
        piece, finish = choices[0].get("text", ""), choices[0].get("finish_reason")
        if not isinstance(piece, str):
            raise RemoteEngineError(f"remote engine {self.where} answered a completion without text")
        return piece, finish if isinstance(finish, str) and finish else None


def _error_message(body: bytes) -> str:
    """The one-line message of an error answer: OpenAI's {"error": {"message"}} and its variants, else the text."""
    try:
        document = json.loads(body)
    except ValueError:
        return _one_line(body.decode("utf-8", "replace")) or "no message"
    error = document.get("error", document) if isinstance(document, dict) else document
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    return _one_line(error if isinstance(error, str) else json.dumps(error))


class _EventReader:
    """One streamed POST, read by a thread so that the caller can poll `should_stop` and the timeouts and
    cancel by closing the connection while the engine is silent."""

    def __init__(self, connection: http.client.HTTPConnection, path: str, payload: bytes, headers: dict[str, str],
                 check_status: Callable[[int, bytes], None]) -> None:
        self._connection = connection
        self._items: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self.finished = False  # the stream ended with [DONE] or a whole JSON answer
        self._thread = threading.Thread(target=self._read, args=(path, payload, headers, check_status),
                                        name="remote-engine-stream", daemon=True)
        self._thread.start()

    def _read(self, path: str, payload: bytes, headers: dict[str, str],
              check_status: Callable[[int, bytes], None]) -> None:
        try:
            self._connection.request("POST", path, body=payload, headers=headers)
            # The connect timeout ends here: `events()` times the answer and close() wakes a blocked read.
            self._connection.sock.settimeout(None)
            response = self._connection.getresponse()
            if response.status >= 300:
                check_status(response.status, response.read(1 << 16))
            if response.getheader("Content-Type", "").startswith("application/json"):
                self._put(_parse(response.read(16 << 20)))  # an engine that does not stream
                self.finished = True
            else:
                for line in iter(response.readline, b""):
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue  # blank lines, comments (keep-alives), event: and id: fields
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        self.finished = True
                        break
                    self._put(_parse(data))
            self._items.put(("end", None))
        except (_Retry, RemoteEngineError) as error:
            self._items.put(("retry" if isinstance(error, _Retry) else "fail", error))
        except Exception as error:  # noqa: BLE001 - the socket failed, or close() pulled it away mid-read
            if not self._closed.is_set():
                self._items.put(("retry", f"connection lost ({_one_line(str(error) or type(error).__name__)})"))

    def _put(self, event: dict) -> None:
        self._items.put(("event", event))

    def events(self, stopped: Callable[[], bool], deadline: float | None, first_timeout_s: float,
               idle_timeout_s: float) -> Iterator[dict | None]:
        """The stream's JSON events; None once when `stopped()` or the deadline ends it early."""
        last = time.monotonic()
        timeout = first_timeout_s
        while True:
            if stopped() or (deadline is not None and time.monotonic() > deadline):
                yield None
                return
            try:
                kind, value = self._items.get(timeout=_POLL_S)
            except queue.Empty:
                if time.monotonic() - last > timeout:
                    raise _Retry(f"no answer within {timeout:g} s") from None
                continue
            if kind == "end":
                return
            if kind == "retry":
                raise value if isinstance(value, _Retry) else _Retry(value)
            if kind == "fail":
                raise value
            last, timeout = time.monotonic(), idle_timeout_s
            yield value

    def close(self) -> None:
        self._closed.set()
        sock = self._connection.sock
        if sock is not None:
            try:
                sock.shutdown(2)  # wakes the reading thread now; close() alone may leave it blocked
            except OSError:
                pass
        self._connection.close()


def _parse(data: bytes) -> dict:
    try:
        event = json.loads(data)
    except ValueError:
        raise RemoteEngineError(f"remote engine answered something that is not JSON: "
                                f"{_one_line(data.decode('utf-8', 'replace'), 120)}") from None
    if not isinstance(event, dict):
        raise RemoteEngineError("remote engine answered JSON that is not an object")
    return event


def load_remote(url: str, model: str | None = None, prompt_format: str = "text") -> RemoteEngine:
    """A remote engine at `url` for `model`'s tokenizer (None = the embedded default model's), with the
    engine's model list read if it answers now. Raises EngineError when the tokenizer cannot load."""
    with engine_errors():
        info = load_info(model)
    engine = RemoteEngine(RemoteSettings(url=url, prompt_format=prompt_format), info.tokenizer,
                          info.name, info.max_seq_len)
    engine.probe()
    return engine
