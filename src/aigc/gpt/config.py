"""Configs of the GPT commands (no torch import: ``aigc --help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

from aigc.config import DEVICE_CHOICES, option, require
from aigc.training.options import LmOptimizerOptions, RunOptions

# The GPT MLP's GELU (GPTConfig.activation) -> nn.GELU's ``approximate``: exact, or GPT-2's tanh form
ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}

TOKENIZERS = ("char", "bpe")
CHECKPOINTS = ("best", "last")
EVAL_METRICS = ("perplexity",)  # loss, perplexity and bits per byte from one pass over the data
# Task metrics of fine-tuned runs: on generated completions (bleu, chrf, rouge, distinct) or on
# predicted labels (accuracy: accuracy and macro-F1).
TASK_METRICS = ("bleu", "chrf", "rouge", "distinct", "accuracy")
MAX_BEAMS = 1000  # beam search keeps every beam's KV cache in memory
MAX_SAMPLES = 100_000
DECODE_DTYPES = ("auto", "fp32", "bf16")
DTYPE_HELP = ("the dtype float32 weights decode in: auto is bf16 where the CPU or GPU computes bf16 natively and "
              "the model has 20M+ parameters (fewer bytes read per token), else fp32; a run of aigc compress keeps "
              "its own")  # `gpt generate --num-samples`: each sample is generated and printed in turn


def _positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        require(value is None or value > 0, f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass
class GptTrainConfig(LmOptimizerOptions, RunOptions):
    data: str | None = option(None, "a text file or a folder of .txt files (default: the Python language "
                                    "reference bundled with Python, pydoc_data.topics)")
    val_data: str | None = option(None, "validation text (default: the last 10%% of --data)")
    tokenizer: str = option("char", "char: one token per character; bpe: byte-level BPE learned from the data",
                            choices=TOKENIZERS)
    vocab_size: int = option(1024, "BPE vocabulary size (bpe only, at least 256)")
    init_from: str | None = option(None, "start from the weights and tokenizer of this GPT run (fine-tuning, e.g. "
                                         "after `aigc gpt import-hf`); the model flags are then taken from it")
    n_layer: int = option(4, "Transformer blocks")
    n_head: int = option(4, "attention heads per block")
    n_embd: int = option(128, "embedding width (a multiple of --n-head)")
    block_size: int = option(64, "context length in tokens")
    dropout: float = option(0.0, "dropout probability")
    activation: str = option("gelu", "the MLP's GELU: gelu (exact, faster on CPU) or gelu_tanh (GPT-2's "
                                     "approximation)", choices=tuple(ACTIVATIONS))
    batch_size: int = option(12, "sequences per micro-batch")
    lr: float = option(1e-3, "peak learning rate (AdamW)")
    min_lr: float = option(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = option(100, "steps of linear warm-up")
    max_iters: int | None = option(None, "optimizer steps (default 2000 unless --time-budget is given)")
    weight_decay: float = option(0.1, "AdamW weight decay, on matrices only")
    compile: bool = option(False, "torch.compile the model (faster steps after a compile of tens of seconds)")
    eval_interval: int = option(250, "steps between validation losses (and checkpoints)")
    eval_iters: int = option(20, "validation batches per evaluation (the same batches every time)")
    log_every: int = option(10, "steps between training-loss lines in metrics.jsonl")

    def validate(self) -> None:
        self.validate_run()
        self.validate_optimizer()
        _positive(self, "vocab_size", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_iters",
                  "eval_interval", "eval_iters", "log_every")
        require(self.n_embd % self.n_head == 0,
                f"--n-embd ({self.n_embd}) must be a multiple of --n-head ({self.n_head})")
        require(self.tokenizer != "bpe" or self.vocab_size >= 256,
                f"--vocab-size must be at least 256 for byte-level BPE, got {self.vocab_size}")
        require(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        require(self.lr > 0 and 0 <= self.min_lr <= self.lr, "need 0 < --lr and 0 <= --min-lr <= --lr")
        require(self.warmup_iters >= 0, f"--warmup-iters must be non-negative, got {self.warmup_iters}")
        require(self.weight_decay >= 0, f"--weight-decay must be non-negative, got {self.weight_decay}")


@dataclass
class GptGenerateConfig:
    run: str | None = option(None, "GPT run directory (from `aigc gpt train`, `aigc gpt import-hf`, or a "
                                   "completion run of `aigc gpt finetune`; required)")
    prompt: str = option("\n", "text to continue")
    max_new_tokens: int = option(200, "tokens to generate per sample")
    temperature: float = option(0.8, "sampling temperature; 0 picks the most likely token (greedy)")
    top_k: int | None = option(None, "sample only among the k most likely tokens")
    top_p: float | None = option(None, "sample only among the most likely tokens whose probabilities sum to p")
    repetition_penalty: float = option(1.0, "divide the logits of tokens already present by this (>1 repeats less)")
    stop: str | None = option(None, "stop a sample when this text appears (it is left out)")
    num_samples: int = option(1, "independent samples")
    seed: int = option(0, "random seed for sampling")
    stream: bool = option(False, "print tokens as they are generated")
    beams: int | None = option(None, "beam search with this many beams instead of sampling (1: greedy); "
                                     "each sample then stops at the end of its line")
    length_penalty: float = option(1.0, "beam search ranks finished beams by log-probability / length ** this")
    checkpoint: str = option("best", "best: lowest validation loss; last: the latest step", choices=CHECKPOINTS)
    device: str = option("auto", "where to run", choices=DEVICE_CHOICES)
    dtype: str = option("auto", DTYPE_HELP, choices=DECODE_DTYPES)
    compile: bool = option(False, "torch.compile the one-token decoding step: about twice the tokens/s of a "
                                  "large model at one sample, after a first-decode compile of 10-45 s (needs a C++ "
                                  "compiler on a CPU)")

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        _positive(self, "max_new_tokens", "top_k", "num_samples")
        require(self.temperature >= 0, f"--temperature must be non-negative, got {self.temperature}")
        require(self.top_p is None or 0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")
        require(self.repetition_penalty > 0, f"--repetition-penalty must be positive, got {self.repetition_penalty}")
        require(self.stop is None or self.stop != "", "--stop must not be empty")
        require(not (self.stream and self.num_samples > 1), "--stream prints one sample; drop --num-samples")
        _positive(self, "beams")
        require(self.beams is None or self.beams <= MAX_BEAMS, f"--beams must be at most {MAX_BEAMS}, got {self.beams}")
        require(self.num_samples <= MAX_SAMPLES, f"--num-samples must be at most {MAX_SAMPLES}, got {self.num_samples}")
        require(not (self.beams and (self.stream or self.num_samples > 1)),
                "--beams gives one best completion; drop --stream and --num-samples")


@dataclass
class GptEvalConfig:
    run: str | None = option(None, "GPT run directory (required)")
    data: str | None = option(None, "text file or folder to evaluate on (default: the run's validation split)")
    metrics: str = option("perplexity", "comma-separated metrics; perplexity gives loss, perplexity and bits "
                                        f"per byte (choose from {', '.join(EVAL_METRICS)}); on a fine-tuned run: "
                                        f"{', '.join(TASK_METRICS)} (accuracy also gives macro-F1)")
    checkpoint: str = option("best", "best or last checkpoint of the run", choices=CHECKPOINTS)
    batch_size: int = option(32, "windows per forward pass")
    json: str | None = option(None, "also write the results to this JSON file (and, for task metrics, the "
                                    "generated hypotheses or predicted labels beside it, FILE.hyp.txt)")
    device: str = option("auto", "where to run", choices=DEVICE_CHOICES)
    source: str | None = option(None, "task metrics of a completion run: prompts, one a line (with --target)")
    target: str | None = option(None, "task metrics: reference completions aligned with --source")
    beams: int = option(1, "task metrics: beam width for decoding completions (1: greedy)")
    length_penalty: float = option(1.0, "beam search ranks finished beams by log-probability / length ** this")
    max_new_tokens: int = option(128, "task metrics: the longest completion generated")

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        _positive(self, "batch_size", "max_new_tokens")
        known = EVAL_METRICS + TASK_METRICS
        require(bool(self.metric_names()), f"--metrics names no metric; choose from {', '.join(known)}")
        unknown = [m for m in self.metric_names() if m not in known]
        require(not unknown, f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        require(1 <= self.beams <= MAX_BEAMS, f"--beams must be in [1, {MAX_BEAMS}], got {self.beams}")
        require(all(m in TASK_METRICS for m in self.metric_names()) or
                not any(m in TASK_METRICS for m in self.metric_names()),
                "perplexity is measured on plain text and task metrics on a fine-tuned run's examples: "
                "ask for them in separate calls")
        require((self.source is None) == (self.target is None), "--source and --target go together")
        require(self.source is None or any(m in TASK_METRICS for m in self.metric_names()),
                "--source/--target are examples for task metrics (e.g. --metrics bleu); perplexity reads --data")

    def metric_names(self) -> list[str]:
        return [name.strip() for name in self.metrics.split(",") if name.strip()]


@dataclass
class GptExportHfConfig:
    run: str | None = option(None, "GPT run directory to export (required)")
    out: str | None = option(None, "folder for the Hugging Face model (config.json, model.safetensors, "
                                    "tokenizer files; required)")
    checkpoint: str = option("best", "best or last checkpoint of the run", choices=CHECKPOINTS)

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        require(self.out is not None, "--out DIR is required")


@dataclass
class GptImportHfConfig:
    hf: str | None = option(None, "folder of a Hugging Face GPT-2 model (config.json, weights, tokenizer; required)")
    out: str | None = option(None, "new GPT run directory (required)")

    def validate(self) -> None:
        require(self.hf is not None, "--hf DIR is required")
        require(self.out is not None, "--out RUN is required")


FINETUNE_TASKS = ("completion", "classify")
FINETUNE_METHODS = ("full", "lora", "adalora", "adapter")
FINETUNE_TEMPLATE = "{prompt} => "


@dataclass
class GptFinetuneConfig(LmOptimizerOptions, RunOptions):
    base: str | None = option(None, "the pretrained GPT run to start from (required)")
    task: str = option("completion", "completion: learn to continue prompts (loss on the completion only); "
                                     "classify: a classification head on the last token", choices=FINETUNE_TASKS)
    data: str | None = option(None, "training examples, JSONL: {\"prompt\", \"completion\"} or {\"text\", \"label\"} "
                                    "a line (or give --source and --target)")
    source: str | None = option(None, "completion: prompts, one a line (.gz allowed), aligned with --target")
    target: str | None = option(None, "completion: the completion of each --source line")
    val_data: str | None = option(None, "validation examples, JSONL (default: the last 5%% of the training "
                                        "examples, at most --eval-examples)")
    val_source: str | None = option(None, "validation prompts (with --val-target)")
    val_target: str | None = option(None, "validation completions aligned with --val-source")
    template: str = option(FINETUNE_TEMPLATE, "completion: how a prompt is shown to the model; {prompt} is replaced "
                                              "by the prompt, the completion follows and ends with a newline")
    method: str = option("full", "full: train every weight; lora / adalora: low-rank updates through peft; "
                                 "adapter: Houlsby bottleneck adapters", choices=FINETUNE_METHODS)
    rank: int = option(8, "lora: rank r; adalora: the average rank it prunes down to (from 1.5 r)")
    alpha: float = option(16.0, "lora/adalora: the update is scaled by alpha / rank")
    adapter_size: int = option(64, "adapter: bottleneck width")
    checkpoint: str = option("best", "which weights of --base to start from", choices=CHECKPOINTS)
    dropout: float | None = option(None, "dropout probability (default: the base run's)")
    batch_size: int = option(16, "examples per micro-batch")
    lr: float | None = option(None, "peak learning rate (default: 3e-4 for full, 1e-3 for the others)")
    min_lr: float | None = option(None, "learning rate at the end of the cosine decay (default: --lr / 10)")
    warmup_iters: int = option(50, "steps of linear warm-up")
    max_iters: int | None = option(None, "optimizer steps (default 1000 unless --time-budget is given)")
    weight_decay: float = option(0.0, "AdamW weight decay, on matrices only")
    eval_interval: int = option(200, "steps between validation losses (and checkpoints)")
    eval_examples: int = option(500, "validation examples scored at each evaluation")
    log_every: int = option(10, "steps between training-loss lines in metrics.jsonl")

    def validate(self) -> None:
        require(self.base is not None or self.resume, "--base RUN is required")
        require(self.data is not None or self.source is not None or self.resume,
                "give the training examples: --data FILE.jsonl, or --source F --target F")
        require(self.data is None or self.source is None, "give either --data or --source/--target, not both")
        require((self.source is None) == (self.target is None), "--source and --target go together")
        require((self.val_source is None) == (self.val_target is None), "--val-source and --val-target go together")
        require(self.task == "completion" or self.source is None, "--source/--target are for --task completion")
        require("{prompt}" in self.template, "--template must contain {prompt}")
        self.validate_run()
        self.validate_optimizer()
        _positive(self, "rank", "alpha", "adapter_size", "batch_size", "lr", "min_lr", "max_iters", "eval_interval",
                  "eval_examples", "log_every")
        require(self.dropout is None or 0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        require(self.warmup_iters >= 0, f"--warmup-iters must be non-negative, got {self.warmup_iters}")
        require(self.weight_decay >= 0, f"--weight-decay must be non-negative, got {self.weight_decay}")
        require(not (self.method == "adalora" and self.time_budget and not self.max_iters),
                "--method adalora schedules its rank budget over --max-iters; give --max-iters, not --time-budget")


@dataclass
class GptMergeConfig:
    run: str | None = option(None, "a fine-tuned run (lora, adalora or full; required)")
    out: str | None = option(None, "new run directory with the merged, plain weights (required)")
    checkpoint: str = option("best", "best or last checkpoint of the run", choices=CHECKPOINTS)
    base: str | None = option(None, "the base run the adapter applies to (default: the one recorded in --run)")

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        require(self.out is not None, "--out RUN is required")
