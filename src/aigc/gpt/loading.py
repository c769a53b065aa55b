"""GPT run directories: writing their config and loading them, for plain and fine-tuned runs.

A GPT run (kind "gpt") holds ``config.json`` (the model config, the tokenizer kind, the
training config), ``tokenizer.json`` and its checkpoints (``model.safetensors`` in each; the
last and the best, by validation loss). A fine-tuned run (kind "gpt-finetune") records its
base run, method and task; with ``--method full`` its checkpoints hold the whole GPT,
otherwise only what the method added (``adapter.safetensors``: a few per cent of the model),
applied to the base weights at load time. A classification head always goes into the
adapter file.

Loading is one pipeline: read config.json -> build the GPT -> load the base weights ->
apply the method's transform (LoRA, AdaLoRA, adapters; folded in where a plain GPT is
wanted) -> load the run's own weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from aigc import __version__, runs
from aigc.data.tokenizers import TOKENIZER_FILE, Tokenizer
from aigc.errors import UserError
from aigc.gpt.model import GPT, GPTConfig
from aigc.gpt.peft_methods import MethodSettings, Tuned, apply_method, extra_tensors
from aigc.gpt.tasks import ClassificationHead, Task, TaskModel

GPT_KIND = "gpt"
FINETUNE_KIND = "gpt-finetune"
ADAPTER_FILE = "adapter.safetensors"
OPTIONAL_MODEL_FIELDS = ("head_size", "mlp_width", "activation")


@dataclass
class GptRun:
    """A language model ready to generate: the GPT (eval mode), its tokenizer, config.json."""

    model: GPT
    tokenizer: Tokenizer
    run_config: dict
    path: Path


@dataclass
class Finetuned:
    """A fine-tuned run: the task model (GPT + method + head), the method, tokenizer and task."""

    model: TaskModel
    tuned: Tuned
    tokenizer: Tokenizer
    task: Task
    run_config: dict


def write_run_config(run_dir: Path, model_config: GPTConfig, tokenizer: Tokenizer, train: dict | None,
                     kind: str = GPT_KIND, **extra) -> None:
    runs.save_json(run_dir / runs.CONFIG_FILE, {"kind": kind, "aigc_version": __version__,
                                                "model": asdict(model_config), "tokenizer": tokenizer.kind,
                                                **extra, "train": train})


def save_inference_run(run_dir: Path, model: GPT, tokenizer: Tokenizer, extra_weights: dict | None = None,
                       weights: dict | None = None, train: dict | None = None, **config) -> None:
    """Write a GPT run that was not trained here (an import, a merge, a compression): one
    checkpoint at step 0 holding ``weights`` (default: the model's own); ``train``: the training
    config of the run it came from, if any (its data is the default evaluation text)."""
    tokenizer.save(run_dir / TOKENIZER_FILE)
    weights = {runs.WEIGHTS_FILE: model.weights() if weights is None else weights,
               **({ADAPTER_FILE: extra_weights} if extra_weights else {})}
    runs.save_checkpoint(run_dir, 0, weights, state=None)
    write_run_config(run_dir, model.config, tokenizer, train=train, **config)


def model_config_of(run_config: dict, run: Path) -> GPTConfig:
    try:
        values = run_config["model"]
        # head_size and mlp_width came later (pruning), activation later still: runs written before
        # lack them, and take GPTConfig's defaults (GPT-2's shapes and tanh GELU).
        return GPTConfig(**{f.name: values[f.name] for f in fields(GPTConfig)
                            if f.name in values or f.name not in OPTIONAL_MODEL_FIELDS})
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{run / runs.CONFIG_FILE} has no valid GPT model config ({exc})") from None


def weights_path(run: Path, checkpoint: str, name: str = runs.WEIGHTS_FILE) -> Path:
    """A weights file of a run's ``best`` or ``last`` checkpoint."""
    return runs.checkpoint_dir(run, checkpoint) / name


def load_into(model: GPT, path: Path) -> int:
    """Load a GPT's weights from a safetensors file into ``model``; returns their step."""
    tensors, metadata = runs.load_weights(path)
    if any(t.dtype == torch.int8 for t in tensors.values()):
        raise UserError(f"{path} holds int8 weights (a run of aigc compress, for inference); train or fine-tune "
                        "from the run it came from")
    try:
        model.load_weights(tensors)
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"{path} does not fit this model: {str(exc).splitlines()[0]}") from None
    return int(metadata.get("step", 0))


def load_gpt(run: str | Path, checkpoint: str = "best", device: torch.device | str = "cpu",
             plain: bool = False, dtype: str = "fp32", compile: bool = False) -> GptRun:
    """The language model of a GPT run, or of a completion run of ``aigc gpt finetune`` (its base
    with the fine-tuned weights: LoRA/AdaLoRA folded in, adapters kept; ``plain``: refuse
    adapters and quantized weights, for callers that need GPT-2's exact layout).

    A run of ``aigc compress`` loads in the form it was compressed to (int8 or bf16 weights);
    the float32 weights of any other run run in ``dtype``: ``fp32``, ``bf16``, or ``auto``
    (bf16 where the device has native bf16; see :func:`decode_dtype`). ``compile``: decode one
    token at a time through torch.compile (:meth:`GPT.compile_decoding`)."""
    run = Path(run)
    run_config = runs.read_run_config(run, (GPT_KIND, FINETUNE_KIND))
    if run_config["kind"] == FINETUNE_KIND:
        loaded = _finetuned_language_model(run, checkpoint, device, plain, dtype, compile)
    else:
        loaded = _gpt_run(run, run_config, checkpoint, device, plain, dtype, compile)
    if compile:
        loaded.model.compile_decoding()
    return loaded


def _gpt_run(run: Path, run_config: dict, checkpoint: str, device: torch.device | str, plain: bool, dtype: str,
             compile: bool) -> GptRun:
    model = GPT(model_config_of(run_config, run))
    scheme = quantization_of(run_config, run)
    if scheme is None:
        load_into(model, weights_path(run, checkpoint))
        model = in_decode_dtype(model.to(device), dtype, pack=not compile)
    elif plain:
        raise UserError(f"{run} holds {scheme} weights, which have no place in a GPT-2 layout; "
                        f"use the run it was compressed from ({run_config['compression'].get('source')})")
    elif compile and scheme == "int8-dynamic":
        raise UserError(f"{run} holds int8-dynamic weights, whose torch.ao kernels torch.compile cannot "
                        "compile; decode it without --compile, or compress with --quantize int8")
    else:
        model = _load_compressed(model, run, checkpoint, scheme, device, pack=not compile)
    tokenizer = load_tokenizer(run, model.config)
    return GptRun(model.eval(), tokenizer, run_config, run)


def quantization_of(run_config: dict, run: Path) -> str | None:
    """The quantization scheme a compressed run's weights are in (None: float32 weights)."""
    from aigc.compress.quantize import SCHEMES

    compression = run_config.get("compression") or {}
    scheme = compression.get("quantize") if isinstance(compression, dict) else "?"
    if scheme is not None and scheme not in SCHEMES:
        raise UserError(f"{run / runs.CONFIG_FILE} names an unknown quantization {scheme!r} "
                        f"(known: {', '.join(SCHEMES)})")
    return scheme


# ``auto`` keeps small models in float32: below this size per-token overhead, not reading
# weights, bounds decoding, and bf16's conversions make it slower (docs/benchmarks-compress.md).
AUTO_BF16_MIN_PARAMS = 20_000_000


def decode_dtype(dtype: str, model: GPT) -> torch.dtype:
    """The dtype a float32 GPT runs in for decoding: ``fp32``, ``bf16``, or ``auto``: bf16 where the
    device computes it natively and the model is large enough to gain (half the bytes read per
    token), else float32."""
    from aigc.devices import bf16_supported

    if dtype == "auto":
        fast = bf16_supported(model.device) and model.num_params() >= AUTO_BF16_MIN_PARAMS
        return torch.bfloat16 if fast else torch.float32
    return torch.bfloat16 if dtype == "bf16" else torch.float32


def in_decode_dtype(model: GPT, dtype: str, pack: bool = True) -> GPT:
    """``model`` (float32, on its device) in the dtype :func:`decode_dtype` picks for ``dtype``
    (bf16 packed for oneDNN unless ``pack`` is False: see :func:`aigc.compress.gpt.to_bf16`)."""
    if decode_dtype(dtype, model) == torch.float32:
        return model
    from aigc.compress.gpt import to_bf16

    return to_bf16(model, pack)


def _load_compressed(model: GPT, run: Path, checkpoint: str, scheme: str, device: torch.device | str,
                     pack: bool) -> GPT:
    from aigc.compress.gpt import load_compressed

    path = weights_path(run, checkpoint)
    tensors, _ = runs.load_weights(path)
    if scheme != "bf16" and torch.device(device).type != "cpu":
        raise UserError(f"{run} holds {scheme} weights, which run on the CPU only; use --device cpu, or compress "
                        "with --quantize bf16 for an accelerator")
    try:
        return load_compressed(model.to(device), tensors, scheme, pack)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"{path} does not hold {scheme} weights of this model: {str(exc).splitlines()[0]}") from None


def load_tokenizer(run: Path, model_config: GPTConfig) -> Tokenizer:
    tokenizer = Tokenizer.load(run / TOKENIZER_FILE)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise UserError(f"{run / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the model only "
                        f"{model_config.vocab_size}")
    return tokenizer


def _finetuned_language_model(run: Path, checkpoint: str, device: torch.device | str, plain: bool,
                              dtype: str, compile: bool) -> GptRun:
    finetuned = load_finetuned(run, checkpoint)
    if finetuned.task.kind != "completion":
        raise UserError(f"{run} is a {finetuned.task.kind} run: its output is a label, not text; "
                        "score it with `aigc gpt eval --metrics accuracy`")
    method = finetuned.tuned.settings.name
    if method == "adapter" and plain:
        raise UserError(f"{run} was fine-tuned with adapters, which have no place in a GPT-2 layout; "
                        "fine-tune with --method full, lora or adalora to export it")
    gpt = (finetuned.model.gpt if method == "adapter" else finetuned.tuned.merged()).to(device)
    return GptRun(in_decode_dtype(gpt, dtype, pack=not compile).eval(), finetuned.tokenizer, finetuned.run_config,
                  run)


# ---------------------------------------------------------------- fine-tuned runs

def build_task_model(model_config: GPTConfig, task: Task, settings: MethodSettings,
                     base_weights: Path) -> tuple[TaskModel, Tuned]:
    """The base GPT with its weights, the method applied, and a head for classify."""
    gpt = GPT(model_config)
    load_into(gpt, base_weights)
    tuned = apply_method(gpt, settings)
    head = ClassificationHead(model_config.n_embd, len(task.labels)) if task.kind == "classify" else None
    return TaskModel(gpt, head), tuned


def task_weights(model: TaskModel, method: str) -> dict[str, dict[str, torch.Tensor]]:
    """What a fine-tuned checkpoint holds: the whole GPT (full) and the method's and head's tensors."""
    weights = {runs.WEIGHTS_FILE: model.gpt.weights()} if method == "full" else {}
    extra = extra_tensors(model, skip_frozen_base=method != "full")
    return {**weights, ADAPTER_FILE: extra} if extra else weights


def load_task_weights(folder: Path, model: TaskModel, method: str) -> None:
    """Put a checkpoint's weights into ``model``: the GPT's (full) and the method's and head's tensors."""
    if method == "full":
        load_into(model.gpt, folder / runs.WEIGHTS_FILE)
    expected = extra_tensors(model, skip_frozen_base=method != "full")
    if not expected:
        return
    path = folder / ADAPTER_FILE
    tensors, _ = runs.load_weights(path)
    missing, unexpected = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
    if missing or unexpected:
        raise UserError(f"{path} does not fit this model: missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise UserError(f"{path} does not fit the base model: {name} is {tuple(tensor.shape)} in the file "
                            f"but {tuple(expected[name].shape)} here (was the adapter trained on another base?)")
    model.load_state_dict(tensors, strict=False)


def load_finetuned(run: str | Path, checkpoint: str = "best", device: torch.device | str = "cpu",
                   base: str | Path | None = None) -> Finetuned:
    """A fine-tuned run ready to use: its model (eval mode, on ``device``), tokenizer and task.

    Also accepts a merged run (a plain "gpt" run with a task). ``base`` replaces the base run
    recorded in the run (a run moved to another machine); it must have the same shape.
    """
    run = Path(run)
    run_config = _read_task_run_config(run)
    task = _task_of(run_config, run)
    model_config = model_config_of(run_config, run)
    settings = _method_of(run_config, run)
    if settings.name == "full":
        start = weights_path(run, checkpoint)
    else:
        base = Path(base or run_config["base"]["run"])
        base_model = model_config_of(runs.read_run_config(base, GPT_KIND), base)
        if asdict(base_model) | {"dropout": 0} != asdict(model_config) | {"dropout": 0}:
            raise UserError(f"{run} was fine-tuned on a base of another shape than {base}: "
                            f"{_shape(model_config)} vs {_shape(base_model)}")
        start = weights_path(base, run_config["base"].get("checkpoint", "best"))
    model, tuned = build_task_model(model_config, task, settings, start)
    load_task_weights(runs.checkpoint_dir(run, checkpoint), model, settings.name)
    tokenizer = Tokenizer.load(run / TOKENIZER_FILE)
    return Finetuned(model.to(device).eval(), tuned, tokenizer, task, run_config)


def _task_of(run_config: dict, run: Path) -> Task:
    try:
        return Task.from_dict(run_config["task"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{run / runs.CONFIG_FILE} has no valid task ({exc})") from None


def _method_of(run_config: dict, run: Path) -> MethodSettings:
    try:
        return MethodSettings(**run_config.get("method", {"name": "full"}))
    except TypeError as exc:
        raise UserError(f"{run / runs.CONFIG_FILE} has no valid fine-tuning method ({exc})") from None


def _shape(config: GPTConfig) -> str:
    return (f"vocab {config.vocab_size}, block {config.block_size}, {config.n_layer} layers, {config.n_head} heads, "
            f"width {config.n_embd}")


def _read_task_run_config(run: Path) -> dict:
    run_config = runs.read_run_config(run, (FINETUNE_KIND, GPT_KIND))  # a merged run: a plain GPT that knows its task
    if "task" not in run_config:
        raise UserError(f"{run} is a GPT run without a task; fine-tune it first with `aigc gpt finetune`")
    return run_config
