#!/usr/bin/env bash
# The CUDA paths in one short script, for a lent GPU machine (or DEVICE=cpu SMALL=1 as a dry run):
# training (plain, torchrun with nccl, FSDP, torch.compile), the GAN and text GAN, generation,
# evaluation and the server. Each step's output goes to $LOG_DIR; timings are read off the runs'
# metrics by benchmarks/cuda_summary.py.
#
#   TEXT=../shared/data/shakespeare/input.txt LOG_DIR=out bash benchmarks/cuda_check.sh
set -uo pipefail
DEVICE=${DEVICE:-cuda}
TEXT=${TEXT:-../shared/data/shakespeare/input.txt}  # Tiny Shakespeare
LOG_DIR=${LOG_DIR:-benchmarks/out/cuda}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1

if [ "${SMALL:-0}" = 1 ]; then  # a dry run on the CPU: the same commands, tiny
    GPT_SHAPE=(--n-layer 1 --n-head 2 --n-embd 32 --block-size 32 --batch-size 4)
    GPT_ITERS=20; GAN_STEPS=10; TORCHRUN_ITERS=10
else  # nanoGPT's shakespeare-char shape (10.8M parameters)
    GPT_SHAPE=(--n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --batch-size 64)
    GPT_ITERS=500; GAN_STEPS=1000; TORCHRUN_ITERS=200
fi
GPT_COMMON=(--data "$TEXT" --device "$DEVICE" "${GPT_SHAPE[@]}" --eval-interval 100 --eval-iters 10
            --log-every 10 --warmup-iters 50)

step() {  # step NAME COMMAND...: run it, keep its output and exit status
    local name=$1; shift
    local started=$(date +%s%N)
    "$@" >"$LOG_DIR/$name.log" 2>&1
    local status=$?
    printf '%-22s exit %s  %6.1f s\n' "$name" "$status" "$((($(date +%s%N) - started) / 1000000))e-3" | tee -a "$LOG_DIR/steps.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} >"$LOG_DIR/machine.txt" 2>&1

step gpt-train python3 -m aigc gpt train "${GPT_COMMON[@]}" --max-iters $GPT_ITERS --out "$WORK/gpt"
step gpt-train-compile python3 -m aigc gpt train "${GPT_COMMON[@]}" --max-iters $GPT_ITERS --compile --out "$WORK/gpt-compiled"
step gpt-train-fp32 python3 -m aigc gpt train "${GPT_COMMON[@]}" --max-iters $TORCHRUN_ITERS --no-amp --out "$WORK/gpt-fp32"
step torchrun-ddp python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m aigc gpt train "${GPT_COMMON[@]}" \
    --max-iters $TORCHRUN_ITERS --out "$WORK/gpt-ddp"
step torchrun-fsdp python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m aigc gpt train "${GPT_COMMON[@]}" \
    --max-iters $TORCHRUN_ITERS --strategy fsdp --out "$WORK/gpt-fsdp"
step torchrun-fsdp-resume python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m aigc gpt train --resume \
    --max-iters $((TORCHRUN_ITERS + 50)) --strategy fsdp --out "$WORK/gpt-fsdp"
step gpt-generate python3 -m aigc gpt generate --run "$WORK/gpt" --prompt "ROMEO:" --max-new-tokens 200 --device "$DEVICE"
step gpt-eval python3 -m aigc gpt eval --run "$WORK/gpt" --data "$TEXT" --device "$DEVICE"
step gan-train python3 -m aigc gan train --model dcgan --conditional --steps $GAN_STEPS --device "$DEVICE" \
    --log-every 50 --out "$WORK/gan"
step gan-torchrun python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m aigc gan train --model dcgan \
    --conditional --steps $((GAN_STEPS / 5)) --device "$DEVICE" --log-every 50 --out "$WORK/gan-ddp"
step gan-sample python3 -m aigc gan sample --run "$WORK/gan" --n 100 --device "$DEVICE" --out "$LOG_DIR/gan-grid.png"
head -n 5000 "$TEXT" >"$WORK/lines.txt"  # the text GAN's sentences: one per line
step textgan-train python3 -m aigc textgan train --data "$WORK/lines.txt" --device "$DEVICE" --n-layer 2 \
    --n-head 2 --n-embd 64 --max-iters 100 --d-pretrain-steps 20 --adv-rounds 5 --rollouts 4 --out "$WORK/textgan"
step textgan-torchrun python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m aigc textgan train \
    --data "$WORK/lines.txt" --device "$DEVICE" --n-layer 2 --n-head 2 --n-embd 64 --max-iters 50 --d-pretrain-steps 10 \
    --adv-rounds 2 --rollouts 4 --out "$WORK/textgan-ddp"

# The server on this GPU: one completion and one image through the OpenAI routes.
port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
python3 -m aigc serve --gpt "$WORK/gpt" --gan "$WORK/gan" --device "$DEVICE" --port "$port" >"$LOG_DIR/serve-server.log" 2>&1 &
server=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break; sleep 0.5; done
step serve-completion curl -sf "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "gpt", "prompt": "ROMEO:", "max_tokens": 64}'
step serve-image curl -sf "http://127.0.0.1:$port/v1/images/generations" -H 'Content-Type: application/json' \
    -d '{"model": "gan", "prompt": "7", "n": 1}' -o "$LOG_DIR/serve-image.json"
curl -sf "http://127.0.0.1:$port/metrics" >"$LOG_DIR/serve-metrics.txt"
kill -TERM $server; wait $server

python3 benchmarks/cuda_summary.py "$WORK" "$LOG_DIR" | tee "$LOG_DIR/summary.txt"
