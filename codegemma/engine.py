"""The engine the rest of the product uses: a loaded model, its tokenizer, generation and scoring.

It knows token ids and tensors, nothing of editors. One generation at a time: callers serialise (fim's
CompletionService is the one worker). `codegemma.contract` states what callers may rely on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from codegemma import kernels
from codegemma.contract import GenerateOptions
from codegemma.drafters import AcceptanceHistory, Drafter, ModelDrafter, NGramDrafter
from codegemma.errors import PromptTooLongError
from codegemma.generate import PREFILL_BLOCK, Generation, TextStream, generate
from codegemma.linear import weight_formats
from codegemma.model import Transformer
from codegemma.prompt_cache import PromptCache
from codegemma.sampling import Sampler
from codegemma.speculation import VerifyCost, cost_from_times, measure_pass_times
from codegemma.tokenizer import Tokenizer

# The longest draft the engine verifies: with the token before it, the most rows the native products take
# (a 17th row would send the pass through prefill's dequantized tiles). The draft policy picks shorter ones
# from the measured cost of verification and the acceptance it sees (codegemma.speculation).
DEFAULT_MAX_DRAFT = kernels.MAX_ROWS - 1
# A verification cost measured while something else loaded the machine can say that drafts never pay, and
# would keep speculation off for the life of the process. Where the table says so, the engine measures again
# this long after, then after twice as long, and so on, RECHECKS times at most; each pass's best time over
# all measurements counts (outside load only adds time). A re-measurement takes ~0.3 s for the embedded
# model and the prompt cache starts over.
RECHECK_AFTER_S = 60.0
RECHECKS = 5


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str, draft_model: Transformer | None = None,
                 max_draft: int = DEFAULT_MAX_DRAFT, recheck_after_s: float = RECHECK_AFTER_S):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.config = model.cfg
        self.draft_model = draft_model
        self.max_draft = max_draft
        self.prompt_cache = PromptCache(model, PREFILL_BLOCK)
        self.acceptance = AcceptanceHistory()  # n-gram drafts' recent acceptance: where a request's drafts start
        self._verify_cost: VerifyCost | None = None
        self._pass_times: dict[int, float] = {}  # best seconds of a pass over n positions, all measurements
        self._measurements = 0
        self._recheck_after_s = recheck_after_s
        self._recheck_at = 0.0

    @property
    def verify_cost(self) -> VerifyCost:
        """The measured cost of verifying drafts on this machine (measured on first use: ~0.3 s for the
        embedded model; again by `recheck_speculation`)."""
        if self._verify_cost is None:
            self._measure()
        assert self._verify_cost is not None
        return self._verify_cost

    def _measure(self) -> None:
        # measuring overwrites the model's KV cache, so the prompt cache starts over
        self.prompt_cache.commit([], None)
        ks = tuple(sorted({k for k in (1, 2, 4, 8, self.max_draft) if k <= self.max_draft}))
        for n, seconds in measure_pass_times(self.model, ks).items():
            self._pass_times[n] = min(seconds, self._pass_times.get(n, seconds))
        self._verify_cost = cost_from_times(self._pass_times)
        self._recheck_at = time.monotonic() + self._recheck_after_s * 2 ** self._measurements
        self._measurements += 1

    @property
    def verify_measurements(self) -> int:
        """How many times the verification cost has been measured (0 before first use)."""
        return self._measurements

    def recheck_speculation(self) -> bool:
        """Measure the verification cost again where the last table said drafts do not pay and the time for
        another look has come (RECHECK_AFTER_S). Returns True when it measured: the model's own KV cache
        was overwritten (the engine's prompt cache knows; other users of that cache must drop theirs)."""
        if (self.draft_model is not None or self._verify_cost is None or self._measurements > RECHECKS
                or time.monotonic() < self._recheck_at or self._verify_cost.pays(max_k=self.max_draft)):
            return False
        self._measure()
        return True

    @property
    def speculative_default(self) -> bool:
        """Whether speculative decoding is on when a caller leaves it to the engine: where the measured
        verification cost lets drafts accepted at a typical rate pay. A draft model given explicitly is
        always used."""
        return self.draft_model is not None or self.verify_cost.pays(max_k=self.max_draft)

    @property
    def supports_fim(self) -> bool:
        return self.tokenizer.has_fim

    @property
    def max_seq_len(self) -> int:
        return self.model.max_len

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def formats(self) -> dict[str, int]:
        """Bytes of weights per storage format, e.g. {"Q8_0": 180e6, "Q5_0": 44e6, ..., "F32": ...}."""
        return weight_formats(self.model)

    def check(self, prompt: Sequence[int], options: GenerateOptions) -> list[int]:
        """The prompt as a list, or a ValueError / PromptTooLongError that says what is wrong with the request."""
        prompt = list(prompt)
        if not prompt:
            raise ValueError("empty prompt: give at least one token (e.g. tokenizer.bos_id)")
        self.tokenizer.check_ids(prompt)
        if len(prompt) >= self.max_seq_len:
            raise PromptTooLongError(f"prompt has {len(prompt)} tokens; this engine's context is "
                                     f"{self.max_seq_len}")
        if options.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        return prompt

    def drafter(self, sampler: Sampler, forced: bool) -> Drafter:
        """The draft model if there is one, else n-gram drafts sized by the measured verification cost, or
        (speculation forced on by the caller) by acceptance alone, so that drafting never stops for cost."""
        if self.draft_model is not None:
            return ModelDrafter(self.draft_model, Sampler(sampler.temperature, sampler.top_k, sampler.top_p,
                                                          sampler.seed), max_k=self.max_draft)
        if forced:
            return NGramDrafter(max_k=self.max_draft)
        return NGramDrafter(max_k=self.max_draft, cost=self.verify_cost, history=self.acceptance)

    def generate(self, prompt: Sequence[int], options: GenerateOptions = GenerateOptions(), *,
                 on_text: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 draft_sources: Sequence[Sequence[int]] = ()) -> Generation:
        """Continue `prompt` (token ids). `on_text` receives decoded text as it is made; `should_stop` is
        polled every step and cancels; `draft_sources` are extra token sequences the drafter may copy from
        (e.g. the suffix of a left-to-right prompt)."""
        prompt = self.check(prompt, options)
        sampler = Sampler(options.temperature, options.top_k, options.top_p, options.seed)
        if options.speculative is None:
            self.recheck_speculation()
        speculative = self.speculative_default if options.speculative is None else options.speculative
        # before the prompt cache is arranged: the first drafter measures the verification cost, which
        # overwrites the model's KV cache
        drafter = self.drafter(sampler, forced=options.speculative is True) if speculative else None
        cached = self.prompt_cache.prepare(prompt, options.cache_key) if options.reuse_prompt else 0
        if not options.reuse_prompt:
            self.prompt_cache.commit([], None)
        stops = self.tokenizer.stop_ids if options.stop_ids is None else options.stop_ids
        stream = TextStream(self.tokenizer.decode, options.stop_strings, on_text)
        try:
            gen, valid = generate(self.model, prompt, cached, max_new_tokens=options.max_new_tokens, sampler=sampler,
                                  stop_ids=stops, eos_id=self.tokenizer.eos_id, stream=stream,
                                  drafter=drafter,
                                  max_draft=self.max_draft, should_stop=should_stop, deadline=options.deadline,
                                  sources=draft_sources)
        except BaseException:
            self.prompt_cache.commit([], None)  # the cache content is unknown after an interruption
            raise
        if options.reuse_prompt:
            # only the prompt: KV of generated tokens came from decode steps, whose products have other
            # shapes than a prefill's, and reuse must stay bit-identical to a fresh prefill
            self.prompt_cache.commit(prompt[:valid], options.cache_key)
        return gen

    @torch.inference_mode()
    def score_continuation(self, prompt: Sequence[int], continuation: Sequence[int],
                           cache_key: str | None = None) -> list[float]:
        """log p(continuation[i] | prompt + continuation[:i]) for each continuation token, reusing the prompt
        cache's KV of `prompt` (the key as in GenerateOptions.cache_key). One prefill-shaped pass over the
        tokens after the reused prefix; only whole prompt blocks are committed back to the cache (the whole
        prompt where the model computes rows apart), so a later generation stays bit-identical to a fresh
        prefill."""
        prompt, continuation = list(prompt), list(continuation)
        if not prompt or not continuation:
            raise ValueError("score_continuation needs a non-empty prompt and continuation")
        tokens = prompt + continuation
        self.tokenizer.check_ids(tokens)
        if len(tokens) > self.max_seq_len:
            raise PromptTooLongError(f"prompt and continuation have {len(tokens)} tokens; this engine's context "
                                     f"is {self.max_seq_len}")
        start = self.prompt_cache.prepare(prompt, cache_key)
        apart = self.model.rows_apart()  # each row as a prefill computes it: the whole prompt's KV is reusable
        first = len(prompt) - 1  # the position whose logits predict continuation[0]
        out: list[float] = []
        try:
            for lo in range(start, len(tokens), PREFILL_BLOCK):
                piece = tokens[lo:lo + PREFILL_BLOCK]
                h = (self.model.hidden_rows if apart else self.model.hidden)(torch.tensor([piece]), lo)  # [1, S, D]
                rows = range(max(lo, first), min(lo + len(piece), len(tokens) - 1))
                if not rows:
                    continue
                logits = self.model.output(h[:, rows.start - lo:rows.stop - lo]).float()[0]  # [R, V]
                logp = torch.log_softmax(logits, dim=-1)
                out += [float(logp[i, tokens[p + 1]]) for i, p in enumerate(rows)]
        except BaseException:
            self.prompt_cache.commit([], None)
            raise
        self.prompt_cache.commit(prompt if apart else prompt[:len(prompt) // PREFILL_BLOCK * PREFILL_BLOCK], cache_key)
        return out

    @torch.inference_mode()
    def score(self, text: str) -> list[tuple[int, float]]:
        """Per-token log-likelihood of `text` (after <bos>): [(token id, log p(token | previous))]."""
        ids = self.tokenizer.encode(text, bos=True)
        if len(ids) > self.max_seq_len:
            raise PromptTooLongError(f"text has {len(ids)} tokens; this engine's context is {self.max_seq_len}")
        self.prompt_cache.commit([], None)
        out: list[tuple[int, float]] = []
        chunk = 256
        for lo in range(0, len(ids) - 1, chunk):
            piece = ids[lo:lo + chunk]
            logits = self.model(torch.tensor([piece]), torch.arange(lo, lo + len(piece)))[0]  # [S, V]
            logp = torch.log_softmax(logits.float(), dim=-1)
            targets = ids[lo + 1:lo + 1 + len(piece)]
            out += [(t, float(logp[i, t])) for i, t in enumerate(targets)]
        return out

    def warmup(self) -> float:
        """Pay the one-off costs before the first request does: one tiny generation (the first native calls)
        and, where the engine decides speculation, measuring the verification cost. Returns seconds (~0.6 s
        for the embedded model)."""
        t = time.perf_counter()
        self.generate([self.tokenizer.bos_id], GenerateOptions(max_new_tokens=2, reuse_prompt=False, speculative=False))
        if self.draft_model is None:
            self.verify_cost  # noqa: B018 - measured now, not on the first request that may draft
        return time.perf_counter() - t
