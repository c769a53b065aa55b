"""Several processes with ``torchrun``, the way nanoGPT does it, kept small.

``torchrun`` starts one process per rank and tells each its place in the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). :func:`setup` joins the process
group (gloo on CPU, nccl on CUDA, ``--dist-backend`` to override) and gives each rank its
share of the CPU threads; :func:`device` is the device a rank trains on (``cuda:LOCAL_RANK``
on GPUs). Without torchrun nothing is joined and every function here answers for one
process: rank 0 of 1, so a single-process run is exactly what it always was.

Every rank builds the same model from the same seed and draws the same global batch, of
which it takes its own slice (``training.samplers``); :func:`wrap` puts the trained modules
in DistributedDataParallel (or FSDP2's ``fully_shard`` with ``--strategy fsdp``), which
averages the gradients, so all ranks keep the same weights. Only rank 0 writes files
(:func:`is_main`). Waiting for the other ranks -- the rendezvous, and every collective
after it -- gives up after ``--dist-timeout`` seconds (60 by default, not PyTorch's 30
minutes) with one line.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from aigc.devices import resolve_device
from aigc.errors import UserError


def launched() -> bool:
    """Whether this process was started by torchrun (or set up by hand the same way)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that logs and writes files."""
    return rank() == 0


def setup(config, fsdp: bool = False) -> None:
    """Join the process group when launched by torchrun (a no-op otherwise, or when joined
    already); give this rank its share of the machine's CPU threads.

    ``config`` carries the run options ``device``, ``strategy``, ``dist_backend`` and
    ``dist_timeout``; ``fsdp`` says whether the trainer can shard its model."""
    if config.strategy == "fsdp" and not fsdp:
        raise UserError("--strategy fsdp is implemented for gpt train only; this trainer runs with --strategy ddp")
    if not launched():
        if config.strategy == "fsdp":
            raise UserError("--strategy fsdp shards the model over several processes: start the run with torchrun "
                            "(e.g. torchrun --standalone --nproc-per-node 2 -m aigc ...)")
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if dist.is_initialized():
        return
    cuda = device(config).type == "cuda"
    backend = config.dist_backend if config.dist_backend != "auto" else "nccl" if cuda else "gloo"
    timeout = datetime.timedelta(seconds=config.dist_timeout)
    try:
        store = _store_of_this_group(timeout)
        dist.init_process_group(backend, timeout=timeout, device_id=device(config) if cuda else None,
                                **({} if store is None else dict(store=store, rank=int(os.environ["RANK"]),
                                                                  world_size=int(os.environ["WORLD_SIZE"]))))
    except (RuntimeError, ValueError) as exc:  # DistStoreError and DistNetworkError are RuntimeErrors
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} could not join the other "
                        f"processes within --dist-timeout {config.dist_timeout:g} s at "
                        f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({first})") from None


def _store_of_this_group(timeout: datetime.timedelta):
    """A key-value store that holds nothing from an earlier group, when torchrun shares its own.

    torchrun (c10d rendezvous, torch 2.13) hands every group of workers the same store, the
    agent's, and keeps it across ``--max-restarts``: a restarted group can then read the
    addresses the killed group published there and fail to connect (gloo connectFullMesh
    "Connection refused"; pytorch/pytorch#135712). So rank 0 starts a new store of its own and
    publishes its port in the agent's; the other ranks take the port once a server answers
    there (a port left by a killed group answers no more). None when torchrun shares no store:
    ``init_process_group`` then makes its own from MASTER_ADDR and MASTER_PORT."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    host = os.environ["MASTER_ADDR"]
    shared = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    key = f"aigc/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/store-port"
    if int(os.environ["RANK"]) == 0:
        own = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timeout)
        shared.set(key, str(own.port))
        return own
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port = int(shared.get(key))  # waits for the key; may be a killed group's
        try:
            with socket.create_connection((host, port), timeout=1):
                return dist.TCPStore(host, port, is_master=False, timeout=timeout)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no store answered at {host}:{port}") from None
            time.sleep(0.1)


def device(config) -> torch.device:
    """The device this rank trains on: ``--device``, and on CUDA the GPU of its LOCAL_RANK."""
    chosen = resolve_device(config.device)
    if chosen.type == "cuda" and launched():
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(chosen)
    return chosen


def teardown() -> None:
    """Leave the process group (at the end of a run; a no-op on one process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def describe() -> str:
    """This run's processes and backend, such as '2 processes (gloo)', for the line a run
    starts with; '' for one process started without torchrun."""
    if not dist.is_initialized():
        return ""
    return f"{world_size()} process{'es' if world_size() > 1 else ''} ({dist.get_backend()})"


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_main(value):
    """Rank 0's ``value`` (any picklable object), on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks (the same names on every rank, in the same order):
    what rank 0 logs, so that a curve of N processes compares with one of one process."""
    if not dist.is_initialized() or not values:
        return values
    summed = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(summed)
    return dict(zip(values, (summed / world_size()).tolist()))


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (stop together: time budgets, Ctrl-C)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _collective_device() -> torch.device:
    """Where a tensor must be for a collective of this group: nccl reduces only CUDA tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def wrap(module: nn.Module, strategy: str = "ddp") -> nn.Module:
    """``module`` made to average its gradients over the ranks in backward: in
    DistributedDataParallel (only its trainable parameters take part), or sharded with FSDP2
    (``fully_shard`` on each Transformer block, then on the whole). On one process, ``module``
    itself. Keep the plain module for evaluating and saving: DDP shares its parameters."""
    if not dist.is_initialized():
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(getattr(module, "transformer", None), "h", []):
            fully_shard(block)
        return fully_shard(module)
    device_ids = [module_device(module).index] if module_device(module).type == "cuda" else None
    # broadcast_buffers=False: batch norm keeps its running statistics per rank (each rank
    # normalises its own batch anyway). Rank 0's copied over them in every forward would also
    # change, in place, the statistics a CUDA batch norm saved for its backward, which fails
    # when a GAN's discriminator runs on real and fake images before one backward.
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Forward and backward inside this context average the gradients over the ranks only when
    ``enabled``: off for the inner micro-batches of gradient accumulation, on for the last."""
    if enabled or not dist.is_initialized():
        yield
    elif isinstance(module, nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):  # an FSDP2 module
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


# --- FSDP2 checkpoints: gathered whole on rank 0, so a sharded run saves the files of any other

def _full_options(**more):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **more)


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A sharded module's whole state dict on rank 0 (on the CPU); {} on the other ranks."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_full_options(cpu_offload=True))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state of a sharded module, whole on rank 0 (keyed by parameter name)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_full_options(cpu_offload=True))


def load_full_state(module: nn.Module, optimizer: torch.optim.Optimizer, weights_file, optimizer_state: dict) -> None:
    """Load whole weights (a safetensors file without the tied ``lm_head.weight``) and a whole
    optimizer state into a sharded module: every rank reads them and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    from aigc.runs import load_weights

    tensors, _ = load_weights(weights_file)
    set_model_state_dict(module, {**tensors, "lm_head.weight": tensors["transformer.wte.weight"]},
                         options=_full_options())
    set_optimizer_state_dict(module, optimizer, _keyed_by_name(module, optimizer, optimizer_state),
                             options=_full_options())


def _keyed_by_name(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """An optimizer state keyed by parameter name, as FSDP's loader wants it. A checkpoint of a
    run without FSDP keys it by the parameters' places in the optimizer's groups (0, 1, ...);
    the same model and groups put the same parameters in the same places."""
    if not any(isinstance(place, int) for group in state["param_groups"] for place in group["params"]):
        return state
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    name_at = [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]
    return {"state": {name_at[place]: value for place, value in state["state"].items()},
            "param_groups": [{**group, "params": [name_at[place] for place in group["params"]]}
                             for group in state["param_groups"]]}
