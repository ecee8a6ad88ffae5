"""Suffix-aware candidate reranking for models without FIM training (Fried et al., InCoder, 2022).

A left-to-right model never sees the suffix, so its greedy completion often contradicts the code after the
cursor. Here several candidates are made for the hole (the request's own decoding first, then samples with
other seeds; all reuse the prompt's cached KV) and each is scored by how likely the model finds it and the
first lines of the suffix after it:

    score = mean log p(candidate token | prefix, earlier candidate tokens)      ("mean" normalisation)
          + sum  log p(suffix-probe token | prefix + candidate, earlier probe tokens)

The probe is the same text for every candidate, so its sum compares directly; the candidate's own part is a
per-token mean so that longer candidates are not punished for their length ("sum" scores the joint
probability instead, as InCoder did). Candidates are scored after post-processing: the text scored is the
text the user would get. A FIM prompt already holds the suffix, so there only the candidate part counts.

The number of candidates is capped by the request (`candidates`) and by a latency budget: after the first
candidate, another is made only while the time spent plus one more candidate's expected cost stays within
`rerank_budget_ms`. A request for one candidate, or one whose budget affords only one, takes exactly the
single-candidate path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from codegemma import ScoringEngine

from fim.engine import engine_errors
from fim.postprocess import postprocess
from fim.request import CompletionOptions, CompletionResponse

RERANK_TEMPERATURE = 0.7  # sampled candidates of a greedy request: varied but still plausible
RERANK_TOP_P = 0.95
SAMPLE_EXTRA_TOKENS = 16
PROBE_LINES = 2     # lines of the suffix with content that are scored after each candidate
MAX_LINE_PREFIXES = 6  # shorter candidates cut from each generated one (rerank_lines)
PROBE_TOKENS = 48   # at most this many suffix tokens (the probe is scored once per candidate)


@dataclass(frozen=True)
class Scored:
    """One candidate, how it was made and its scores (log-probabilities in nats)."""

    response: CompletionResponse
    source: str  # greedy | sample | "lines of I": a line prefix of generated candidate I
    temperature: float
    seed: int | None
    candidate_logp: tuple[float, ...]
    probe_logp: tuple[float, ...]
    score: float

    def to_dict(self) -> dict:
        return {"text": self.response.text, "source": self.source, "raw": self.response.debug.get("raw", ""),
                "stop_reason": self.response.stop_reason, "temperature": self.temperature, "seed": self.seed,
                "candidate_tokens": len(self.candidate_logp), "candidate_logp": round(sum(self.candidate_logp), 4),
                "probe_tokens": len(self.probe_logp), "probe_logp": round(sum(self.probe_logp), 4),
                "score": round(self.score, 4), "done_s": round(self.response.elapsed_s, 6)}  # since the request began


def suffix_probe(text: str, cursor: int, lines: int = PROBE_LINES) -> str:
    """The suffix up to the end of its first `lines` lines with content (the rest of the cursor's line
    counts when it has any); '' when the suffix is blank."""
    suffix = text[cursor:]
    end, seen = 0, 0
    while seen < lines and end < len(suffix):
        newline = suffix.find("\n", end)
        stop = len(suffix) if newline < 0 else newline + 1
        if suffix[end:stop].strip():
            seen += 1
        end = stop
    probe = suffix[:end]
    return probe if probe.strip() else ""


def line_prefixes(response: CompletionResponse, text: str, cursor: int) -> list[CompletionResponse]:
    """Shorter candidates for free: the generated text cut before each of its newlines (its first
    MAX_LINE_PREFIXES lines, one, two, ...: the cheapest to score, and too long is the usual mistake), each
    post-processed as a completion of its own. A multi-line
    completion's length is the post-processor's guess; the suffix tells which length fits."""
    raw = response.debug.get("raw", "")
    if not response.debug.get("mode", {}).get("multiline"):
        return []
    cuts = [i for i, c in enumerate(raw) if c == "\n" and raw[:i].strip()][:MAX_LINE_PREFIXES]
    out = []
    for cut in cuts:
        shorter, steps = postprocess(raw[:cut], text, cursor, response.debug["language"], True)
        if shorter != response.text:
            out.append(replace(response, text=shorter, debug={**response.debug, "raw": raw[:cut], "postprocess": steps}))
    return out


def combine(candidate: list[float], probe: list[float], normalisation: str) -> float:
    if normalisation == "sum":
        return sum(candidate) + sum(probe)
    return (sum(candidate) / len(candidate) if candidate else 0.0) + sum(probe)


def candidate_options(options: CompletionOptions, index: int, first_tokens: int = 0) -> CompletionOptions:
    """Candidate 0 decodes as the request asks; the others sample, each with its own seed, and stop at
    twice the first candidate's length (plus a line's worth): a sample that runs much longer than the
    greedy text costs the most and is rarely the one that fits."""
    if index == 0:
        return replace(options, candidates=1, rerank_lines=False)
    seed = (options.seed + index) % 2**64 if options.seed is not None else index
    max_tokens = min(options.max_tokens, 2 * first_tokens + SAMPLE_EXTRA_TOKENS)
    if options.temperature:
        return replace(options, candidates=1, rerank_lines=False, seed=seed, max_tokens=max_tokens)
    return replace(options, candidates=1, rerank_lines=False, temperature=RERANK_TEMPERATURE,
                   top_p=min(options.top_p, RERANK_TOP_P), seed=seed, max_tokens=max_tokens)


def rerank(engine: ScoringEngine, prompt_ids: list[int], fim: bool, text: str, cursor: int, cache_key: str,
           options: CompletionOptions, run_one: Callable[[CompletionOptions], CompletionResponse],
           cancelled: Callable[[], bool], normalisation: str = "mean") -> CompletionResponse:
    """Make up to `options.candidates` completions with `run_one` and return the best by suffix-aware score;
    its debug record gets a "rerank" entry listing every candidate with its scores."""
    started = time.perf_counter()
    probe = "" if fim else suffix_probe(text, cursor)
    first = run_one(candidate_options(options, 0))
    if cancelled():
        return _single(first, "cancelled")
    if not fim and not probe:
        return _single(first, "the suffix is blank: nothing to rerank by")
    budget_s = options.rerank_budget_ms / 1000 if options.rerank_budget_ms else None
    probe_ids = engine.tokenizer.encode(probe)[:PROBE_TOKENS] if probe else []
    scored: list[Scored] = []
    cache: dict[str, tuple[list[float], list[float]]] = {}

    def score(response: CompletionResponse, opts: CompletionOptions, source: str) -> None:
        if response.text not in cache:
            cand_ids = engine.tokenizer.encode(response.text) if response.text else []
            # near the end of the context the probe is cut to what fits (the candidate itself was generated there)
            tail_ids = probe_ids[:max(0, engine.max_seq_len - len(prompt_ids) - len(cand_ids))]
            logp = engine.score_continuation(prompt_ids, cand_ids + tail_ids, cache_key) \
                if cand_ids or tail_ids else []
            cache[response.text] = (logp[:len(cand_ids)], logp[len(cand_ids):])
        cand, tail = cache[response.text]
        scored.append(Scored(response, source, opts.temperature, opts.seed, tuple(cand), tuple(tail),
                             combine(cand, tail, normalisation)))

    def score_all(response: CompletionResponse, opts: CompletionOptions, index: int) -> None:
        with engine_errors():
            score(response, opts, "greedy" if index == 0 and not opts.temperature else "sample")
            if options.rerank_lines:
                for shorter in line_prefixes(response, text, cursor):
                    if budget_s is not None and time.perf_counter() - started > budget_s:
                        break  # scoring is cheap but not free: the budget bounds it too
                    score(shorter, opts, f"lines of {index}")

    def next_cost() -> float:
        """Expected seconds for one more candidate: the mean of the extra ones so far, else the first's
        decoding (its prompt prefill is not repeated: the prompt cache holds it) plus scoring."""
        if generated > 1:
            return (time.perf_counter() - first_done) / (generated - 1)
        return first.stats.decode_s + score_s

    first_done = time.perf_counter()
    if options.candidates > 1 and budget_s is not None and first_done - started + first.stats.decode_s > budget_s \
            and not options.rerank_lines:
        return _single(first, f"budget {options.rerank_budget_ms} ms affords one candidate")
    score_all(first, options, 0)
    generated = 1
    score_s = time.perf_counter() - first_done
    first_done = time.perf_counter()
    reason = "all candidates made"
    for index in range(1, options.candidates):
        if cancelled():
            reason = "cancelled"
            break
        if budget_s is not None and time.perf_counter() - started + next_cost() > budget_s:
            reason = f"budget {options.rerank_budget_ms} ms"
            break
        opts = candidate_options(options, index, first.stats.new_tokens)
        score_all(run_one(opts), opts, index)
        generated += 1
    best = max(range(len(scored)), key=lambda i: (scored[i].score, -i))  # ties: the earliest (greedy) one
    chosen = scored[best].response
    debug = dict(chosen.debug)
    debug["rerank"] = {"candidates": [s.to_dict() for s in scored], "chosen": best, "asked": options.candidates,
                       "made": generated, "scored": len(scored), "reason": reason, "normalisation": normalisation,
                       "probe": probe, "probe_tokens": len(probe_ids),
                       "total_s": round(time.perf_counter() - started, 6)}
    debug["timings"] = {**debug["timings"], "total_s": round(time.perf_counter() - started, 6)}
    return replace(chosen, elapsed_s=time.perf_counter() - started, debug=debug)


def _single(response: CompletionResponse, reason: str) -> CompletionResponse:
    debug = {**response.debug, "rerank": {"candidates": [], "chosen": 0, "made": 1, "reason": reason}}
    return replace(response, debug=debug)
