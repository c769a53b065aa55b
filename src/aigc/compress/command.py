"""``aigc compress``: a smaller, faster copy of a GPT or GAN run, as a new run directory.

Read top to bottom: load the source run (float32) -> prune heads and MLP channels (GPT) ->
optionally train the pruned model back on calibration text (``aigc gpt train --init-from``,
the shared training loop) -> quantize -> write a normal run directory whose config.json
records what was done and to which source. The source run is only read. The result loads
wherever the source would (``aigc gpt generate``, ``gpt eval``, ``serve``, ``gan sample``); it
is for inference, so ``--resume`` and ``--init-from`` refuse quantized runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from aigc import runs
from aigc.compress.config import CompressConfig
from aigc.errors import UserError
from aigc.loading import run_kind


def compress(config: CompressConfig) -> Path:
    source = Path(config.run)
    kind = run_kind(source)
    out = runs.prepare_run_dir(config.out, resume=False)
    if out.resolve() == source.resolve():
        raise UserError("--out is the source run; compress into a new directory")
    if kind == "gpt":
        return _compress_gpt(config, source, out)
    if kind == "gan":
        return _compress_gan(config, source, out)
    raise UserError(f"{source} is a {kind} run; aigc compress takes GPT runs (merge a fine-tune first with "
                    "`aigc gpt merge`) and GAN runs")


# ---------------------------------------------------------------- GPT runs

def _compress_gpt(config: CompressConfig, source: Path, out: Path) -> Path:
    from aigc.compress.gpt import compressed_weights
    from aigc.gpt.loading import load_gpt, quantization_of, save_inference_run

    run_config = runs.read_run_config(source, "gpt")
    if quantization_of(run_config, source) is not None:
        raise UserError(f"{source} is already {run_config['compression']['quantize']}-quantized; compress the run "
                        f"it came from ({run_config['compression'].get('source')})")
    loaded = load_gpt(source, config.checkpoint, "cpu")
    model, record = loaded.model, {}
    if config.prune_heads or config.prune_mlp:
        model, record = _pruned(config, loaded)
    weights = compressed_weights(model, config.quantize) if config.quantize else model.weights()
    before, after = _megabytes(loaded.model.weights()), _megabytes(weights)
    runs.create_run_dir(out)
    save_inference_run(out, model, loaded.tokenizer, weights=weights, train=run_config.get("train"),
                       **({"task": run_config["task"]} if "task" in run_config else {}),
                       compression={"source": str(source.resolve()), "source_checkpoint": config.checkpoint,
                                    "quantize": config.quantize, **record,
                                    "source_megabytes": round(before, 2), "megabytes": round(after, 2)})
    print(f"compress: {source} -> {out}: {_what(config, record)}; weights {before:.1f} MB -> {after:.1f} MB "
          f"({after / before:.2f}x)")
    return out


def _pruned(config: CompressConfig, loaded) -> tuple[torch.nn.Module, dict]:
    """The pruned (and, with --recover-steps, retrained) float GPT and what was done to it."""
    from aigc.compress.prune import prune, taylor_gradients

    model = loaded.model
    gradients = None
    if config.importance == "taylor":
        gradients = taylor_gradients(model, _calibration_batches(config, loaded))
    pruned = prune(model, config.prune_heads, config.prune_mlp, gradients)
    c, p = model.config, pruned.config
    record = {"prune_heads": config.prune_heads, "prune_mlp": config.prune_mlp, "importance": config.importance,
              "heads": [c.n_head, p.n_head], "mlp_channels": [c.mlp_dim, p.mlp_dim],
              "parameters": [model.num_params(), pruned.num_params()],
              "calibration_data": config.calibration_data and str(Path(config.calibration_data).resolve())}
    if config.recover_steps:
        pruned, record["recovery"] = _recover(config, pruned, loaded.tokenizer)
    return pruned, record


def _calibration_batches(config: CompressConfig, loaded, batches: int = 8, batch_size: int = 8) -> list:
    """Random windows (x, y) (B, T) of the calibration text in the run's tokenizer."""
    import numpy as np

    from aigc.data import text

    block = loaded.model.config.block_size
    tokens = text.encode_cached(text.read_text(config.calibration_data), loaded.tokenizer, config.calibration_data)
    text.check_length(tokens, block, f"--calibration-data ({config.calibration_data})")
    rng = np.random.default_rng(config.seed)
    return [text.windows(tokens, rng.integers(0, len(tokens) - block, batch_size), block) for _ in range(batches)]


def _recover(config: CompressConfig, pruned, tokenizer) -> tuple[torch.nn.Module, dict]:
    """Train the pruned GPT for --recover-steps on the calibration text with the shared GPT
    recipe, in a scratch folder beside --out; returns its best weights and the loss it reached."""
    from aigc.gpt.config import GptTrainConfig
    from aigc.gpt.loading import load_gpt, save_inference_run
    from aigc.gpt.train import train
    from aigc.logging import read_metrics

    scratch = Path(tempfile.mkdtemp(prefix=".recover-", dir=Path(config.out).resolve().parent))
    try:
        save_inference_run(runs.create_run_dir(scratch / "pruned"), pruned, tokenizer)
        steps = config.recover_steps
        trained = train(GptTrainConfig(data=config.calibration_data, init_from=str(scratch / "pruned"),
                                       out=str(scratch / "recovered"), max_iters=steps, lr=config.recover_lr,
                                       min_lr=config.recover_lr / 10, warmup_iters=min(100, steps // 10),
                                       eval_interval=max(1, steps // 4), seed=config.seed, device="cpu"))
        metrics = [m for m in read_metrics(trained / runs.METRICS_FILE) if "val_loss" in m]
        model = load_gpt(trained, "best", "cpu").model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return model, {"steps": steps, "lr": config.recover_lr,
                   "val_loss": [round(m["val_loss"], 4) for m in metrics]}


def _what(config: CompressConfig, record: dict) -> str:
    parts = []
    if record:
        parts.append(f"heads {record['heads'][0]} -> {record['heads'][1]}, MLP channels {record['mlp_channels'][0]} "
                     f"-> {record['mlp_channels'][1]} ({config.importance})")
    if "recovery" in record:
        parts.append(f"{record['recovery']['steps']} recovery steps (val loss {record['recovery']['val_loss'][-1]})")
    if config.quantize:
        parts.append(f"{config.quantize} weights")
    return ", ".join(parts)


def _megabytes(weights: dict[str, torch.Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in weights.values()) / 1e6


# ---------------------------------------------------------------- GAN runs

def _compress_gan(config: CompressConfig, source: Path, out: Path) -> Path:
    from aigc.compress.gan import GAN_SCHEMES, compressed_generator_weights
    from aigc.gan.loading import load_gan

    if config.prune_heads or config.prune_mlp:
        raise UserError("--prune-heads and --prune-mlp prune GPTs; a GAN run takes only --quantize")
    run_config = runs.read_run_config(source, "gan")
    if run_config.get("compression"):
        raise UserError(f"{source} is already compressed ({run_config['compression'].get('quantize')}); compress "
                        f"the run it came from ({run_config['compression'].get('source')})")
    loaded = load_gan(source, ema=True)
    allowed = GAN_SCHEMES[loaded.model_config.model]
    if config.quantize not in allowed:
        raise UserError(f"--quantize {config.quantize} is not offered for {loaded.model_config.model} generators "
                        f"(choose from {', '.join(allowed)}); see docs/benchmarks-compress.md")
    weights = compressed_generator_weights(loaded.generator, config.quantize)
    before = _megabytes(loaded.generator.state_dict())
    after = _megabytes(weights)
    runs.create_run_dir(out)
    runs.save_checkpoint(out, 0, {runs.WEIGHTS_FILE: weights}, state=None)
    runs.save_json(out / runs.CONFIG_FILE, {**run_config, "compression": {
        "source": str(source.resolve()), "quantize": config.quantize, "generator": "the EMA copy where the run has one",
        "source_megabytes": round(before, 2), "megabytes": round(after, 2)}})
    print(f"compress: {source} -> {out}: {config.quantize} generator; weights {before:.2f} MB -> {after:.2f} MB")
    return out


# ---------------------------------------------------------------- ONNX

ONNX_TOLERANCE = 1e-4  # max |ONNX Runtime logits - PyTorch logits| at float32

def export_onnx(config) -> Path:
    """``aigc gpt export-onnx``: the GPT with its KV cache as an ONNX graph, checked in ONNX Runtime
    against PyTorch before it is kept (max |logit difference| <= ONNX_TOLERANCE at float32)."""
    from aigc.compress import onnx
    from aigc.gpt.loading import load_gpt
    from aigc.outputs import output_file

    out = output_file(config.out, "--out")
    kind = run_kind(config.run)
    if kind != "gpt":
        raise UserError(f"{config.run} is a {kind} run; export-onnx takes GPT runs")
    _require_onnx()
    model = load_gpt(config.run, config.checkpoint, "cpu", plain=True).model
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    try:
        graph = scratch / "model.onnx"
        onnx.export(model, graph, config.opset)
        prompt = torch.randint(0, model.config.vocab_size, (2, min(5, model.config.block_size - 4)),
                               generator=torch.Generator().manual_seed(0))
        difference = onnx.max_logit_difference(model, graph, prompt)
        if difference > ONNX_TOLERANCE:
            raise UserError(f"the exported graph's logits differ from PyTorch's by {difference:.2e} "
                            f"(> {ONNX_TOLERANCE}); nothing was written")
        if config.quantize:
            onnx.quantize_int8(graph, scratch / "int8.onnx")
            graph = scratch / "int8.onnx"
            difference = onnx.max_logit_difference(model, graph, prompt)
        for extra in scratch.glob(graph.name + ".data"):
            extra.replace(out.with_name(out.name + ".data"))
        graph.replace(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    label = "ONNX Runtime int8" if config.quantize else "ONNX Runtime"
    print(f"export-onnx: {config.run} -> {out} ({out.stat().st_size / 1e6:.1f} MB); {label} vs PyTorch logits: "
          f"max |difference| {difference:.2e}")
    return out



def _require_onnx() -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"export-onnx needs {', '.join(missing)}: pip install -e \".[compress]\"")
