"""The table of benchmarks/cuda_check.sh: per run, the throughput its metrics logged (the median
over the logged windows after the first, which holds the warm-up or the compile) and the last
validation loss.

    python benchmarks/cuda_summary.py WORK LOG_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from aigc.logging import read_metrics


def summarise(run: Path) -> dict:
    metrics = read_metrics(run / "metrics.jsonl")
    speeds = [m.get("tokens_per_s", m.get("images_per_s")) for m in metrics
              if "tokens_per_s" in m or "images_per_s" in m]
    unit = "tokens/s" if any("tokens_per_s" in m for m in metrics) else "images/s"
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    return {"run": run.name, "windows": len(speeds),
            "median_after_first": statistics.median(speeds[1:]) if len(speeds) > 1 else None,
            "unit": unit, "last_val_loss": val[-1] if val else None}


def main(work: Path, log_dir: Path) -> None:
    rows = [summarise(run) for run in sorted(work.iterdir()) if (run / "metrics.jsonl").is_file()]
    for row in rows:
        speed = "-" if row["median_after_first"] is None else f"{row['median_after_first']:,.0f} {row['unit']}"
        val = "-" if row["last_val_loss"] is None else f"{row['last_val_loss']:.4f}"
        print(f"{row['run']:<16} {speed:>22}  val_loss {val}  ({row['windows']} windows)")
    (log_dir / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
