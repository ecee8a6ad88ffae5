"""The model workers shared by a server: loads the engine in the background and serves requests in order.

The engine runs one generation at a time, so the LSP and HTTP servers do not call it directly: they
submit requests here and get a Future each. The queue is bounded (a burst of keystrokes must not pile
up work that nobody will read); cancellation is the caller's `should_stop`, polled every decode step,
or `Future.cancel()` while the request still waits. With `parallel` N > 1 a local engine is wrapped in
codegemma's BatchEngine (N KV slots) and N workers run requests at once, which decode together.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from codegemma import Engine, EngineProtocol
from codegemma.batch import MAX_SLOTS, BatchEngine

from fim.complete import complete
from fim.engine import load_engine
from fim.errors import QueueFullError, ServiceNotReadyError
from fim.request import CompletionRequest, CompletionResponse, validate_request

ProgressCallback = Callable[[str, float], None]

_CLOSE = object()  # queue sentinel that ends a worker
MAX_PARALLEL = MAX_SLOTS  # requests decoded together, one KV slot each


class CompletionService:
    """A background-loaded engine plus `parallel` worker threads draining a bounded request queue.

    `engine` may be given directly (tests, embedding an engine that is already loaded); otherwise
    `start()` loads `model` with `fim.engine.load_engine` in a background thread. `parallel` > 1 batches
    a local engine's requests (codegemma.batch); an engine of another kind keeps one worker.
    """

    def __init__(self, model: str | None = None, dtype: str | None = None, int8: bool = False, quant: str | None = None,
                 max_queue: int = 8, *, engine: EngineProtocol | None = None, parallel: int = 1,
                 server: str | None = None, adapter: str | None = None) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if not 1 <= parallel <= MAX_PARALLEL:
            raise ValueError(f"parallel must be 1..{MAX_PARALLEL}, got {parallel}")
        self.parallel = parallel
        self.model = model
        self.dtype = dtype
        self.int8 = int8
        self.quant = quant
        self.adapter = adapter  # codegemma.load's: None = the default
        self.server = server  # a remote engine's URL (fim.remote): `model` then names only its tokenizer
        self.max_queue = max_queue
        self.engine: EngineProtocol | None = None
        self.error: str | None = None
        self.load_s: float | None = None
        self._given_engine = engine
        self._ready = threading.Event()
        self._closed = False
        self._queue: queue.Queue = queue.Queue()
        self._waiting: dict[Future, Callable[[], bool] | None] = {}  # submitted, not yet picked up
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._workers: list[threading.Thread] = []  # the extra ones, when requests run in parallel

    @property
    def ready(self) -> bool:
        """True once the engine is loaded and requests are being served."""
        return self._ready.is_set() and self.engine is not None

    def start(self, on_progress: ProgressCallback | None = None) -> None:
        """Start loading the engine and the worker; returns at once. Calling it twice is a no-op."""
        with self._lock:
            if self._worker is not None:
                return
            self._worker = threading.Thread(target=self._run, args=(on_progress,), name="fim-worker", daemon=True)
            self._worker.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the load finished (successfully or not); True when the engine is ready."""
        self._ready.wait(timeout)
        return self.ready

    def submit(self, request: CompletionRequest, *, should_stop: Callable[[], bool] | None = None,
               on_text: Callable[[str], None] | None = None) -> Future:
        """Queue a request; the Future resolves to a CompletionResponse or raises a FimError.

        Raises BadRequestError for an invalid request, QueueFullError when `max_queue` requests are
        already waiting, and ServiceNotReadyError when the model failed to load or the service is closed.
        Requests submitted while the model loads wait for it.
        """
        validate_request(request)
        return self._enqueue(lambda engine: complete(engine, request, should_stop=should_stop, on_text=on_text),
                             should_stop)

    def submit_call(self, job: Callable[[EngineProtocol], object], *,
                    should_stop: Callable[[], bool] | None = None) -> Future:
        """Queue `job(engine)` for the worker (a raw generation: the engine routes of `codegemma serve`);
        queueing, cancellation and errors as for `submit`."""
        return self._enqueue(job, should_stop)

    def _enqueue(self, job: Callable[[EngineProtocol], object], should_stop: Callable[[], bool] | None) -> Future:
        with self._lock:
            if self._closed:
                raise ServiceNotReadyError("the completion service is closed")
            if self.error is not None:
                raise ServiceNotReadyError(f"the model failed to load: {self.error}")
            # requests already cancelled (by Future.cancel or their should_stop) hold no place in the queue
            live = sum(1 for f, stop in self._waiting.items() if not (f.cancelled() or (stop and stop())))
            if live >= self.max_queue:
                raise QueueFullError(f"{live} completion requests are already waiting (max {self.max_queue})")
            future: Future = Future()
            self._waiting[future] = should_stop
        self._queue.put((future, job, should_stop))
        return future

    def close(self) -> None:
        """Stop the workers: waiting requests are cancelled, running ones finish their current step."""
        with self._lock:
            self._closed = True
        self._fail_waiting(None)
        for _ in range(1 + len(self._workers)):
            self._queue.put(_CLOSE)
        worker = self._worker
        if worker is not None and worker is not threading.current_thread() and self._ready.is_set():
            worker.join(timeout=30)
            for extra in self._workers:
                extra.join(timeout=30)
        if isinstance(self.engine, BatchEngine):
            self.engine.close()

    def _run(self, on_progress: ProgressCallback | None) -> None:
        loaded = self._load(on_progress)
        if loaded and isinstance(self.engine, BatchEngine):
            with self._lock:
                if not self._closed:
                    self._workers = [threading.Thread(target=self._serve, args=(loaded,), name=f"fim-worker-{i}",
                                                      daemon=True) for i in range(1, self.engine.slots)]
                    for extra in self._workers:
                        extra.start()
        self._serve(loaded)

    def _serve(self, loaded: bool) -> None:
        while True:
            item = self._queue.get()
            if item is _CLOSE:
                return
            future, job, should_stop = item
            with self._lock:
                self._waiting.pop(future, None)
            if should_stop is not None and should_stop():
                future.cancel()  # superseded while it waited: no prefill for an answer nobody reads
            if not future.set_running_or_notify_cancel():
                continue
            # A request that raced the failed load still gets an answer rather than waiting forever.
            if not loaded:
                future.set_exception(ServiceNotReadyError(f"the model failed to load: {self.error}"))
                continue
            try:
                future.set_result(job(self.engine))
            except BaseException as error:  # noqa: BLE001 - every failure belongs to the caller's Future
                future.set_exception(error)

    def _load(self, on_progress: ProgressCallback | None) -> bool:
        report = on_progress or (lambda message, fraction: None)
        start = time.monotonic()
        try:
            if self._given_engine is not None:
                self.engine = self._given_engine
            else:
                report(f"loading model {self.model or 'default'}", 0.0)
                self.engine = load_engine(self.model, dtype=self.dtype, int8=self.int8, quant=self.quant,
                                          server=self.server, adapter=self.adapter)
            if isinstance(self.engine, Engine):
                # one-off costs (first native calls, measuring the verification cost) paid while loading, not
                # by the first completion: ~0.6 s of it for the embedded model
                report("warming up", 0.9)
                self.engine.warmup()
                if self.parallel > 1:
                    self.engine = BatchEngine(self.engine, self.parallel)
        except Exception as error:  # noqa: BLE001 - a load failure is reported, never raised into a thread
            self.error = str(error).splitlines()[0] if str(error) else type(error).__name__
            report(f"model failed to load: {self.error}", 1.0)
            self._fail_waiting(ServiceNotReadyError(f"the model failed to load: {self.error}"))
            return False
        finally:
            self.load_s = time.monotonic() - start
            self._ready.set()
        report(f"model ready: {self.engine.name}", 1.0)
        return True

    def _fail_waiting(self, error: Exception | None) -> None:
        """Drain the queue: each waiting Future gets `error`, or is cancelled when error is None."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _CLOSE:
                continue
            future = item[0]
            with self._lock:
                self._waiting.pop(future, None)
            if error is None:
                future.cancel()
            elif future.set_running_or_notify_cancel():
                future.set_exception(error)
