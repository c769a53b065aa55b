"""Load on `aigc serve`: N concurrent streaming clients against a live server on loopback,
with continuous batching (--max-batch 16) and one request at a time (--max-batch 1).

Each client sends ``--requests`` streaming completions one after another (greedy, a fixed
``--max-tokens``); reported per setting and client count: total tokens/s, p50/p99 time to
first token and inter-token latency, requests finished and errors. Models are made with
random weights in the shapes the issue names: the Shakespeare char GPT (6 layers, 384 wide,
context 256) and GPT-2 small (12 layers, 768 wide, context 1024, vocabulary 50257), with a
character tokenizer (throughput does not depend on what the weights say).

    python benchmarks/serve_load.py                 # both models, 1/4/16/64 clients (long)
    python benchmarks/serve_load.py --quick         # a tiny model, 1/4 clients: a wiring check
    python benchmarks/serve_load.py --compile       # also both servers with --compile
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "shakespeare-char": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384),
    "gpt2-small": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "tiny": dict(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=64),
}
PROMPT = "ROMEO:\nWhat light through yonder window breaks?\n"


def make_run(shape: str, folder: Path) -> Path:
    """A GPT run of ``shape`` with random weights and a character tokenizer."""
    import torch

    from aigc.data.tokenizers import train_char
    from aigc.gpt.loading import save_inference_run
    from aigc.gpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    run = folder / shape
    run.mkdir()
    tokenizer = train_char(PROMPT + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'-\n")
    model = GPT(GPTConfig(**SHAPES[shape]))
    with torch.no_grad():  # ids past the tokenizer's (GPT-2's 50,257 against 65 characters) get logit 0, below
        model.transformer.wte.weight[tokenizer.vocab_size:] = 0  # the best real one: every token streams text
    save_inference_run(run, model, tokenizer)
    return run


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def client(url: str, model: str, requests: int, max_tokens: int, out: dict, lock: threading.Lock) -> None:
    for _ in range(requests):
        start = time.perf_counter()
        times = []
        try:
            with httpx.stream("POST", url + "/v1/completions", timeout=600,
                              json={"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                                    "stream": True}) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}")
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        times.append(time.perf_counter())
        except Exception as exc:  # a benchmark counts failures instead of stopping at the first
            with lock:
                out["errors"].append(repr(exc))
            continue
        with lock:
            out["finished"] += 1
            out["tokens"] += len(times)
            if times:
                out["ttft"].append(times[0] - start)
                out["itl"] += [b - a for a, b in zip(times, times[1:])]


def measure(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    out = {"finished": 0, "tokens": 0, "ttft": [], "itl": [], "errors": []}
    lock = threading.Lock()
    threads = [threading.Thread(target=client, args=(url, model, requests, max_tokens, out, lock))
               for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": clients * requests, "finished": out["finished"],
            "errors": len(out["errors"]), "error_examples": out["errors"][:3], "wall_s": wall,
            "tokens_per_s": out["tokens"] / wall,
            "ttft_p50_s": percentile(out["ttft"], 0.5), "ttft_p99_s": percentile(out["ttft"], 0.99),
            "itl_p50_s": percentile(out["itl"], 0.5), "itl_p99_s": percentile(out["itl"], 0.99)}


def serve(run: Path, port: int, max_batch: int, compile: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen([sys.executable, "-m", "aigc", "serve", "--gpt", str(run), "--port", str(port),
                                "--device", "cpu", "--max-batch", str(max_batch), "--max-queue", "256",
                                *(["--compile"] if compile else [])],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # --compile compiles every batch shape before it listens
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def peak_rss_mb(process: subprocess.Popen) -> float | None:
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure_server(run: Path, shape: str, max_batch: int, compile: bool, args: argparse.Namespace) -> list[dict]:
    """One server of ``run`` under each client count of ``args``; the last row gets its peak memory."""
    process = serve(run, args.port, max_batch, compile)
    rows = []
    try:
        for clients in map(int, args.clients.split(",")):
            row = {"model": shape, "max_batch": max_batch, "compile": compile,
                   **measure(f"http://127.0.0.1:{args.port}", shape, clients, args.requests, args.max_tokens)}
            print({k: v for k, v in row.items() if k != "error_examples"}, flush=True)
            rows.append(row)
        rows[-1]["server_peak_rss_mb"] = peak_rss_mb(process)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, 1 and 4 clients, few tokens")
    parser.add_argument("--models", default="shakespeare-char,gpt2-small")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=2, help="streaming requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--compile", action="store_true", help="also measure both servers with --compile")
    args = parser.parse_args()
    if args.quick:
        args.models, args.clients, args.requests, args.max_tokens = "tiny", "1,4", 2, 16
    compiles = (False, True) if args.compile else (False,)
    servers = [(compile, max_batch) for compile in compiles for max_batch in (16, 1)]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for shape in args.models.split(","):
            run = make_run(shape, Path(folder))
            for compile, max_batch in servers:
                results += measure_server(run, shape, max_batch, compile, args)
    path = write_json("serve_load" + ("_quick" if args.quick else ""),
                      {"settings": vars(args), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
