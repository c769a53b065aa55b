"""``aigc gpt merge``: fold a fine-tuned run's LoRA/AdaLoRA update into plain GPT weights.

W' = W + (alpha / r) B A for every adapted linear layer (peft's ``merge_and_unload``), so the
result is an ordinary "gpt" run (``aigc gpt generate`` and ``aigc gpt finetune --base`` take
it) that no longer needs its base run and runs at the base model's speed. Its ``config.json``
keeps the task, so ``aigc gpt eval --metrics bleu`` still knows the prompt template; a
classification head stays in ``adapter.safetensors``. Houlsby adapters are non-linear and
cannot be folded.
"""

from __future__ import annotations

from pathlib import Path

from aigc.gpt.config import GptMergeConfig
from aigc.gpt.loading import load_finetuned, save_inference_run
from aigc.gpt.peft_methods import extra_tensors
from aigc.runs import create_run_dir, prepare_run_dir


def merge(config: GptMergeConfig) -> Path:
    finetuned = load_finetuned(config.run, config.checkpoint, "cpu", base=config.base)
    gpt = finetuned.tuned.merged()
    run_dir = create_run_dir(prepare_run_dir(config.out, resume=False))
    head = extra_tensors(finetuned.model, skip_frozen_base=False) if finetuned.model.head is not None else {}
    source = finetuned.run_config
    save_inference_run(run_dir, gpt, finetuned.tokenizer, extra_weights=head, task=source["task"],
                       merged_from={"run": str(Path(config.run).resolve()), "checkpoint": config.checkpoint,
                                    "method": source.get("method"), "base": source.get("base")})
    print(f"gpt merge: {source.get('method', {}).get('name', 'full')} run {config.run} -> plain GPT run {run_dir}")
    return run_dir
