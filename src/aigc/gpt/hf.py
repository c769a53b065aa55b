"""GPT-2 interoperability with Hugging Face ``transformers`` (imported lazily, here only).

Our parameter names are GPT-2's, so a conversion is a key-by-key copy, except that GPT-2's
``Conv1D`` layers store their weights as (in, out) where ``nn.Linear`` stores (out, in).
The tokenizer travels as ``tokenizer.json``: BPE runs load with the GPT-2 tokenizer class,
char runs with ``PreTrainedTokenizerFast`` (both through ``AutoTokenizer``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from aigc.data.tokenizers import Tokenizer
from aigc.errors import UserError
from aigc.gpt.loading import load_gpt, save_inference_run
from aigc.gpt.config import GptExportHfConfig, GptImportHfConfig
from aigc.gpt.model import GPT, GPTConfig
from aigc.outputs import output_dir
from aigc.runs import create_run_dir, prepare_run_dir

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Hugging Face activation_function names -> GPTConfig.activation
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def _converted(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours <-> Hugging Face (the same map both ways: transpose the Conv1D weights)."""
    return {k: (v.t().contiguous() if k.endswith(CONV1D) else v) for k, v in weights.items()}


def to_hf(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` with the weights of ``model``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    if c.head_dim * c.n_head != c.n_embd:
        raise UserError(f"this GPT has {c.n_head} heads of {c.head_dim} channels in a width of {c.n_embd} (its heads "
                        "were pruned): GPT-2 has no such layout; export the run it was pruned from")
    hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                           n_head=c.n_head, n_inner=c.mlp_dim,
                           activation_function="gelu_new" if c.activation == "gelu_tanh" else "gelu",
                           resid_pdrop=c.dropout,
                           embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=1e-5,
                           tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
    hf_model = GPT2LMHeadModel(hf_config)
    missing, unexpected = hf_model.load_state_dict(_converted(model.weights()), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GPT-2 key mismatch: missing {missing}, unexpected {unexpected}")
    hf_model.tie_weights()
    return hf_model.eval()


def from_hf(hf_model) -> GPT:
    """Our GPT with the weights of a ``transformers.GPT2LMHeadModel``."""
    c = hf_model.config
    unsupported = [what for what, ok in [
        (f"activation {c.activation_function!r}", c.activation_function in HF_ACTIVATIONS),
        (f"layer-norm epsilon {c.layer_norm_epsilon}", abs(c.layer_norm_epsilon - 1e-5) < 1e-12),
        ("untied output layer", c.tie_word_embeddings),
        ("unscaled or reordered attention", c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx
         and not c.reorder_and_upcast_attn),
    ] if not ok]
    if unsupported:
        raise UserError(f"this GPT-2 variant is not supported: {', '.join(unsupported)}")
    model = GPT(GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer,
                          n_head=c.n_head, n_embd=c.n_embd, dropout=0.0, activation=HF_ACTIVATIONS[c.activation_function],
                          mlp_width=None if c.n_inner in (None, 4 * c.n_embd) else c.n_inner))
    hf_weights = {k: v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    model.load_weights(_converted(hf_weights))
    return model.eval()


def _hf_tokenizer(tokenizer: Tokenizer):
    """The transformers tokenizer class that loads this tokenizer: GPT-2's for BPE."""
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

    if tokenizer.kind == "bpe":  # without GPT-2's default <|endoftext|>, which would add a token
        return GPT2TokenizerFast(tokenizer_object=tokenizer.backend, unk_token=None, bos_token=None, eos_token=None)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend)


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()  # its load reports would break the one-line error promise; we check ourselves


GPT2_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
# A GPT-2 tokenizer in a form we convert: tokenizers' own file, or the byte-level BPE vocabulary and merges.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def _check_hf_folder(hf: Path) -> None:
    """Refuse, before loading anything, a folder that is not a GPT-2 model with weights and a tokenizer."""
    import json

    if not hf.is_dir():
        raise UserError(f"--hf {hf}: no such folder")
    if not (hf / "config.json").is_file():
        raise UserError(f"{hf} is not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads((hf / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"corrupt {hf / 'config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{hf / 'config.json'} is not a model config (not a JSON object)")
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    if model_type != "gpt2" or not isinstance(architectures, list) or \
            any(a not in GPT2_ARCHITECTURES for a in architectures):
        shown = ", ".join(map(str, architectures)) if isinstance(architectures, list) else architectures
        raise UserError(f"{hf} holds a {model_type!r} model ({shown or 'no architectures'}); import-hf converts "
                        f"GPT-2 models (model_type 'gpt2', {' or '.join(GPT2_ARCHITECTURES)}) only")
    if not (hf / "model.safetensors").is_file():
        raise UserError(f"{hf} has no model.safetensors (weights in other formats may run pickled code, and are "
                        "not loaded; save the model with safe_serialization)")
    if not any(all((hf / name).is_file() for name in files) for files in TOKENIZER_FILES):
        raise UserError(f"{hf} has no tokenizer (tokenizer.json, or vocab.json and merges.txt); save the "
                        "tokenizer into the folder too")


def export_hf(config: GptExportHfConfig) -> Path:
    """``aigc gpt export-hf``: a folder ``GPT2LMHeadModel.from_pretrained`` loads offline."""
    _quiet_transformers()
    output_dir(config.out, "--out")  # before any work: a new or empty folder, never a run directory
    loaded = load_gpt(config.run, config.checkpoint, plain=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    out = create_run_dir(Path(config.out))
    to_hf(model).save_pretrained(out)
    _hf_tokenizer(tokenizer).save_pretrained(out)
    print(f"wrote {out}: GPT2LMHeadModel ({model.num_params() / 1e6:.2f}M parameters) and its tokenizer")
    return out


def import_hf(config: GptImportHfConfig) -> Path:
    """``aigc gpt import-hf``: a GPT run (generate, eval, --init-from) from a GPT-2 folder."""
    hf = Path(config.hf)
    _check_hf_folder(hf)  # before importing transformers: a wrong folder is refused at once
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, GPT2LMHeadModel

    _quiet_transformers()
    try:
        hf_model, loading = GPT2LMHeadModel.from_pretrained(hf, local_files_only=True, use_safetensors=True,
                                                            output_loading_info=True)
        hf_tokenizer = AutoTokenizer.from_pretrained(hf, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise UserError(f"cannot load a GPT-2 model and tokenizer from {hf}: {str(exc).splitlines()[0]}") from None
    missing = set(loading.get("missing_keys", ())) - {"lm_head.weight"}  # tied to the token embedding
    mismatched = loading.get("mismatched_keys", ())
    if missing or mismatched:
        names = sorted(missing) + [str(m[0] if isinstance(m, tuple) else m) for m in mismatched]
        raise UserError(f"the weights in {hf} do not fit its config ({len(names)} missing or misshapen, e.g. "
                        f"{names[0]}): a damaged or mismatched model.safetensors")
    if not hasattr(hf_tokenizer, "backend_tokenizer"):
        raise UserError(f"the tokenizer in {hf} has no fast (tokenizers) form to convert")
    tokenizer = Tokenizer(hf_tokenizer.backend_tokenizer)
    if tokenizer.vocab_size < 2:
        raise UserError(f"the tokenizer in {hf} has {tokenizer.vocab_size} token(s); a damaged or empty tokenizer")
    model = from_hf(hf_model)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer in {hf} has {tokenizer.vocab_size} tokens, the model only "
                        f"{model.config.vocab_size}")
    out = create_run_dir(prepare_run_dir(config.out, resume=False))
    save_inference_run(out, model, tokenizer, imported_from=str(hf.resolve()))
    print(f"wrote GPT run {out} ({model.num_params() / 1e6:.2f}M parameters, {tokenizer.vocab_size} tokens)")
    return out
