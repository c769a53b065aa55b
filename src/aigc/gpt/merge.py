"""``aigc gpt merge``: fold a fine-tuned run's LoRA/AdaLoRA update into plain GPT weights.

W' = W + (alpha / r) B A for every adapted linear layer (peft's ``merge_and_unload``), so the
result is an ordinary "gpt" run (``aigc gpt generate`` and ``aigc gpt finetune --base`` take
it) that no longer needs its base run and runs at the base model's speed. Its ``config.json``
keeps the task, so ``aigc gpt eval --metrics bleu`` still knows the prompt template; a
classification head stays in ``adapter.safetensors``. Houlsby adapters are non-linear and
cannot be folded.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from aigc.data.tokenizers import TOKENIZER_FILE
from aigc.gpt.checkpoints import KIND, save_model
from aigc.gpt.config import GptMergeConfig
from aigc.gpt.finetune import ADAPTER_FILE, load_finetuned
from aigc.gpt.peft_methods import extra_tensors
from aigc.runs import CONFIG_FILE, WEIGHTS_FILE, prepare_run_dir, save_json, save_weights


def merge(config: GptMergeConfig) -> Path:
    finetuned = load_finetuned(config.run, config.checkpoint, "cpu", base=config.base)
    gpt = finetuned.tuned.merged()
    run_dir = prepare_run_dir(config.out, resume=False)
    save_model(run_dir / WEIGHTS_FILE, gpt, step=0)
    head = extra_tensors(finetuned.model, skip_frozen_base=False) if finetuned.model.head is not None else {}
    if head:
        save_weights(run_dir / ADAPTER_FILE, head)
    shutil.copyfile(Path(config.run) / TOKENIZER_FILE, run_dir / TOKENIZER_FILE)
    source = finetuned.run_config
    save_json(run_dir / CONFIG_FILE, {
        "kind": KIND, "model": asdict(gpt.config), "tokenizer": source["tokenizer"], "task": source["task"],
        "merged_from": {"run": str(Path(config.run).resolve()), "checkpoint": config.checkpoint,
                        "method": source.get("method"), "base": source.get("base")},
        "train": None})
    print(f"gpt merge: {source.get('method', {}).get('name', 'full')} run {config.run} -> plain GPT run {run_dir}")
    return run_dir
