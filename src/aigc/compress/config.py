"""Configs of ``aigc compress`` and ``aigc gpt export-onnx`` (no torch import: ``aigc --help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

from aigc.config import option, require

SCHEMES = ("int8", "int8-dynamic", "bf16")  # = aigc.compress.quantize.SCHEMES (tests/test_registries.py)
IMPORTANCE = ("magnitude", "taylor")  # = aigc.compress.prune.IMPORTANCE


@dataclass
class CompressConfig:
    run: str | None = option(None, "the GPT or GAN run to compress (it is only read; required)")
    out: str | None = option(None, "the new run directory to write (required)")
    quantize: str | None = option(None, "int8: int8 weights, float activations (GPT; fastest decoding where the CPU "
                                        "has bf16); int8-dynamic: int8 weights and activations (torch.ao dynamic "
                                        "Linear; GPT and the MLP GAN); bf16: every weight in bf16",
                                  choices=SCHEMES)
    prune_heads: float = option(0.0, "GPT: fraction of each block's attention heads to remove, the least important",
                                minimum=0.0)
    prune_mlp: float = option(0.0, "GPT: fraction of each block's MLP channels to remove, the least important",
                              minimum=0.0)
    importance: str = option("magnitude", "how heads and channels are ranked: weight magnitude, or taylor "
                                          "(|weight x gradient| on --calibration-data)", choices=IMPORTANCE)
    calibration_data: str | None = option(None, "text for --importance taylor and --recover-steps (a file or "
                                                "folder of .txt files, in the run's language)")
    recover_steps: int = option(0, "after pruning, train this many steps on --calibration-data (`aigc gpt train "
                                   "--init-from` with the lr below) to win back quality", minimum=0)
    recover_lr: float = option(3e-4, "peak learning rate of the recovery steps", minimum=0.0)
    checkpoint: str = option("best", "which checkpoint of --run to compress (GPT runs)", choices=("best", "last"))
    seed: int = option(0, "random seed of the calibration batches and recovery")

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        require(self.out is not None, "--out DIR is required")
        require(self.quantize is not None or self.prune_heads or self.prune_mlp,
                "nothing to do: give --quantize, --prune-heads or --prune-mlp")
        for name in ("prune_heads", "prune_mlp"):
            value = getattr(self, name)
            require(0 <= value < 1, f"--{name.replace('_', '-')} must be in [0, 1) (a fraction to remove; 1 would "
                                    f"remove everything), got {value}")
        pruning = bool(self.prune_heads or self.prune_mlp)
        require(not self.recover_steps or pruning, "--recover-steps trains a pruned model back; give --prune-heads "
                                                   "or --prune-mlp too")
        require(not self.recover_steps or self.calibration_data is not None,
                "--recover-steps needs --calibration-data FILE to train on")
        require(self.importance != "taylor" or self.calibration_data is not None,
                "--importance taylor needs --calibration-data FILE to take gradients on")
        require(self.recover_lr > 0, f"--recover-lr must be positive, got {self.recover_lr}")


@dataclass
class GptExportOnnxConfig:
    run: str | None = option(None, "the GPT run to export (float weights: not a quantized run; required)")
    out: str | None = option(None, "the .onnx file to write (required)")
    quantize: str | None = option(None, "int8: also quantize the graph with ONNX Runtime's dynamic int8 "
                                        "(MatMul weights)", choices=("int8",))
    checkpoint: str = option("best", "which checkpoint to export", choices=("best", "last"))
    opset: int = option(18, "ONNX opset version (torch's exporter writes 18 and later)", minimum=18, maximum=23)

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        require(self.out is not None, "--out FILE is required")
