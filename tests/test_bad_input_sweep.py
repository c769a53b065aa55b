"""The bad-input promise, swept over every command and every flag (issue #20).

For each command in ``aigc.cli.COMMANDS`` a base command line that would run (tiny settings),
then one flag at a time replaced by a value that is wrong for it: a wrong type, a number out of
range (negative, zero, NaN, inf, 2**70), a missing path, a file where a folder is expected and
the reverse, damaged files (random bytes in a config.json, a truncated safetensors, a broken
gzip), an output that would overwrite a file of a run. Every case must exit with status 2,
print exactly one line on stderr that starts with ``aigc...: error:``, no traceback, and change
no file: every file under the sweep's folder (the tiny runs, the data, the scratch folders) is
hashed before and after each case.

Only invalid values are generated. Numbers that might be valid for a flag are kept only when
the command's config refuses them (the config is the oracle for "out of range"), so no case
starts real work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import struct
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigc.cli import COMMANDS, main
from aigc.config import _field_type, build_config, flag_name
from aigc.errors import UserError
from conftest import checkpoint_file

ERROR_LINE = re.compile(r"^aigc( [\w-]+)*: error: \S")
HUGE = 2**70


# ------------------------------------------------------------------------------ the world

@dataclasses.dataclass
class World:
    root: Path
    paths: dict[str, Path]

    def __getitem__(self, name: str) -> str:
        return str(self.paths[name])


def _write_idx(folder: Path, n: int = 64) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


def _run_quietly(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0, argv


def _damaged_copies(run: Path, root: Path, name: str, model_edits: dict[str, dict]) -> dict[str, Path]:
    """Copies of ``run`` with a random-bytes config.json, a truncated model.safetensors, and model
    configs edited to wrong values."""
    out = {}
    garbage = root / f"{name}_garbage_config"
    shutil.copytree(run, garbage)
    (garbage / "config.json").write_bytes(random.Random(1).randbytes(300))
    out[f"{name}_garbage_config"] = garbage
    truncated = root / f"{name}_truncated"
    shutil.copytree(run, truncated)
    for weights in truncated.rglob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:len(weights.read_bytes()) // 2])
    out[f"{name}_truncated"] = truncated
    for label, edit in model_edits.items():
        edited = root / f"{name}_{label}"
        shutil.copytree(run, edited)
        config = json.loads((edited / "config.json").read_text())
        config["model"].update(edit)
        (edited / "config.json").write_text(json.dumps(config))
        out[f"{name}_{label}"] = edited
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread) -> World:
    root = tmp_path_factory.mktemp("sweep")
    p: dict[str, Path] = {}
    p["idx"] = root / "idx"
    _write_idx(p["idx"])
    p["text"] = root / "corpus.txt"
    p["text"].write_text("the quick brown fox jumps over the lazy dog. " * 30)
    p["cache"] = root.parent / (root.name + "-cache")  # outside the hashed tree: caches may change
    old_env = {k: os.environ.get(k) for k in ("AIGC_CACHE_DIR", "XDG_CACHE_HOME")}
    os.environ["AIGC_CACHE_DIR"] = str(p["cache"] / "aigc")
    os.environ["XDG_CACHE_HOME"] = str(p["cache"])
    p["gan"] = root / "gan_run"
    _run_quietly(["gan", "train", "--model", "mlp", "--data", str(p["idx"]), "--steps", "2", "--width", "8",
                  "--z-dim", "4", "--batch-size", "16", "--no-amp", "--device", "cpu", "--out", str(p["gan"])])
    p["gpt"] = root / "gpt_run"
    _run_quietly(["gpt", "train", "--data", str(p["text"]), "--max-iters", "2", "--n-layer", "1", "--n-head", "1",
                  "--n-embd", "8", "--block-size", "8", "--batch-size", "2", "--eval-interval", "1", "--eval-iters",
                  "1", "--warmup-iters", "0", "--no-amp", "--device", "cpu", "--out", str(p["gpt"])])
    p.update(_damaged_copies(p["gan"], root, "gan", {"bad_types": {"z_dim": "abc"}, "unknown_model": {"model": "vae"},
                                                     "negative": {"width": -8}}))
    p.update(_damaged_copies(p["gpt"], root, "gpt", {"bad_types": {"n_layer": "four"}, "no_heads": {"n_head": 0},
                                                     "negative": {"n_embd": -8}}))
    p["random_bytes"] = root / "random.bin"
    p["random_bytes"].write_bytes(random.Random(2).randbytes(2000))
    p["empty_file"] = root / "empty.txt"
    p["empty_file"].write_text("")
    p["empty_dir"] = root / "empty_dir"
    p["empty_dir"].mkdir()
    p["broken_gz"] = root / "broken.txt.gz"
    p["broken_gz"].write_bytes(gzip.compress(b"some text\n" * 500)[:60] + b"\0garbage" * 20)
    p["broken_idx"] = root / "broken_idx"
    p["broken_idx"].mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (p["broken_idx"] / name).write_bytes(p["broken_gz"].read_bytes())
    p["ids"] = root / "ids.txt"
    p["ids"].write_text("".join(f"{i % 10} {(i + 1) % 10} {(i + 2) % 10} {(i + 3) % 10}\n" for i in range(80)))
    p["textgan"] = root / "textgan_run"  # with a discriminator, for `textgan sample --guided`
    _run_quietly(["textgan", "train", "--data", str(p["ids"]), "--vocab-size", "10", "--max-iters", "1",
                  "--d-pretrain-steps", "1", "--mode", "residual", "--n-layer", "1", "--n-head", "1", "--n-embd",
                  "8", "--batch-size", "8", "--device", "cpu", "--tracker", "none", "--out", str(p["textgan"])])
    p["bad_ids"] = root / "bad_ids.txt"
    p["bad_ids"].write_text("1 2 3 4\n5 6 ² 7\n")
    p["jsonl"] = root / "train.jsonl"
    p["jsonl"].write_text("".join(json.dumps({"prompt": "the", "completion": "fox"}) + "\n" for _ in range(20)))
    p["bert"] = root / "bert"
    p["bert"].mkdir()
    (p["bert"] / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    p["gpt2_no_tokenizer"] = root / "gpt2_no_tokenizer"
    p["gpt2_no_tokenizer"].mkdir()
    (p["gpt2_no_tokenizer"] / "config.json").write_text(json.dumps({"model_type": "gpt2",
                                                                    "architectures": ["GPT2LMHeadModel"]}))
    (p["gpt2_no_tokenizer"] / "model.safetensors").write_bytes(b"\0" * 64)
    p["hf_garbage_config"] = root / "hf_garbage_config"
    p["hf_garbage_config"].mkdir()
    (p["hf_garbage_config"] / "config.json").write_bytes(random.Random(3).randbytes(200))
    p["hf_truncated"] = root / "hf_truncated"
    shutil.copytree(p["gpt2_no_tokenizer"], p["hf_truncated"])
    shutil.copy(p["gpt"] / "tokenizer.json", p["hf_truncated"] / "tokenizer.json")
    (p["hf_truncated"] / "model.safetensors").write_bytes(struct.pack("<Q", 4000) + b'{"a": ')
    p["digit_png"] = root / "digit.png"
    from PIL import Image
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8)).save(p["digit_png"])
    p["scratch"] = root / "scratch"  # where base command lines write: must stay empty
    p["scratch"].mkdir()
    p["cwd"] = root / "cwd"  # default outputs (runs/...) would land here: must stay empty
    p["cwd"].mkdir()
    old_cwd = os.getcwd()
    os.chdir(p["cwd"])
    yield World(root, p)
    os.chdir(old_cwd)
    for key, value in old_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: its inode, size, modification time and a hash of its content
    (a write or a replacement changes one of them)."""
    state = {}
    for path in sorted(root.rglob("*")):
        st_ = path.lstat()
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        state[str(path.relative_to(root))] = (st_.st_ino, st_.st_size, st_.st_mtime_ns, digest)
    return state


# ------------------------------------------------------------------------------ the commands

# `aigc serve` on a port that is always taken: a value the sweep ought to refuse but that slipped
# through would otherwise start a server that never returns. (Bad hosts are still refused first:
# the name is looked up before the port is bound.)
_BUSY = socket.socket()
_BUSY.bind(("127.0.0.1", 0))
_BUSY.listen()
BUSY_PORT = _BUSY.getsockname()[1]


def base_flags(w: World) -> dict[str, dict[str, str | None]]:
    """A command line per command that would run, with tiny settings (None: a flag without value)."""
    s = w.paths["scratch"]
    tiny_gpt = {"n-layer": "1", "n-head": "1", "n-embd": "8", "block-size": "8", "batch-size": "2"}
    return {
        "demo": {"out": str(s / "demo"), "gan-steps": "1", "gpt-iters": "1"},
        "gan train": {"data": w["idx"], "model": "mlp", "steps": "1", "width": "8", "z-dim": "4", "batch-size": "16",
                      "device": "cpu", "out": str(s / "gan")},
        "gan sample": {"run": w["gan"], "n": "4", "out": str(s / "grid.png"), "device": "cpu"},
        "gan eval": {"run": w["gan"], "ref": w["idx"], "n": "8", "json": str(s / "eval.json"), "device": "cpu"},
        "gan guide": {"run": w["gan"], "steps": "1", "samples-per-real": "1", "device": "cpu"},
        "gan restore": {"run": w["gan"], "image": w["digit_png"], "box": "8,8,8,8", "steps": "1", "restarts": "1",
                        "out": str(s / "repaired.png"), "device": "cpu"},
        "gpt train": {"data": w["text"], "max-iters": "1", "eval-interval": "1", "eval-iters": "1",
                      "warmup-iters": "0", "device": "cpu", "out": str(s / "gpt"), **tiny_gpt},
        "gpt generate": {"run": w["gpt"], "prompt": "the", "max-new-tokens": "2", "device": "cpu"},
        "gpt eval": {"run": w["gpt"], "data": w["text"], "json": str(s / "eval.json"), "device": "cpu"},
        "gpt finetune": {"base": w["gpt"], "data": w["jsonl"], "max-iters": "1", "eval-interval": "1",
                         "eval-examples": "2", "warmup-iters": "0", "batch-size": "2", "device": "cpu",
                         "out": str(s / "ft")},
        "gpt merge": {"run": w["gpt"], "out": str(s / "merged")},
        "gpt export-hf": {"run": w["gpt"], "out": str(s / "hf")},
        "gpt import-hf": {"hf": w["empty_dir"], "out": str(s / "imported")},
        "serve": {"gpt": w["gpt"], "gan": w["gan"], "port": str(BUSY_PORT), "device": "cpu"},
        "compress": {"run": w["gpt"], "out": str(s / "compressed"), "quantize": "int8"},
        "gpt export-onnx": {"run": w["gpt"], "out": str(s / "model.onnx")},
        "textgan train": {"data": w["ids"], "vocab-size": "10", "max-iters": "1", "d-pretrain-steps": "1",
                          "adv-rounds": "1", "rollouts": "1", "n-layer": "1", "n-head": "1", "n-embd": "8",
                          "batch-size": "8", "device": "cpu", "out": str(s / "tg")},
        "textgan sample": {"run": w["textgan"], "n": "2", "guided": "2", "out": str(s / "samples.txt"),
                           "device": "cpu"},
    }


def command_name(command) -> str:
    return command.name if command.area is None else f"{command.area} {command.name}"


FAMILY = {"gan": "gan", "gpt": "gpt", "textgan": "gpt", None: "gan"}
RUN_FIELDS = {"run", "base", "init_from"}
DATA_FIELDS = {"data", "val_data", "source", "target", "val_source", "val_target", "ref", "oracle", "calibration_data"}
IMAGE_FIELDS = {"image", "images", "mask"}  # gan restore's inputs
NEW_RUN_COMMANDS = {"demo", "gan train", "gpt train", "gpt finetune", "gpt merge", "gpt import-hf", "textgan train",
                    "compress"}


def path_values(w: World, name: str, field: str) -> list[tuple[str, str]]:
    """Wrong paths for a path flag, by the role of the flag: (label, path) pairs."""
    family = FAMILY[name.split()[0] if " " in name else None]
    other = "gpt" if family == "gan" else "gan"
    missing = ("missing", str(w.root / "no" / "such" / "thing"))
    if name == "serve" and field in ("gpt", "gan"):
        family, other = field, "gan" if field == "gpt" else "gpt"
    if name == "compress" and field == "run":  # GPT and GAN runs both compress: no other kind to refuse
        return [missing, ("a file", w["text"]), ("an empty folder", w["empty_dir"]),
                *((k, w[f"gpt_{k}"]) for k in ("garbage_config", "truncated", "bad_types", "negative", "no_heads"))]
    if field in RUN_FIELDS or (name == "serve" and field in ("gpt", "gan")):
        damaged = ("garbage_config", "truncated", "bad_types", "negative",
                   "unknown_model" if family == "gan" else "no_heads")
        return [missing, ("a file", w["text"]), ("an empty folder", w["empty_dir"]), ("another kind", w[other]),
                *((k, w[f"{family}_{k}"]) for k in damaged)]
    if field in DATA_FIELDS:
        return [missing, *((k, w[k]) for k in ("random_bytes", "empty_file", "empty_dir", "broken_gz", "broken_idx",
                                               "bad_ids"))]
    if field in IMAGE_FIELDS:
        return [missing, *((k, w[k]) for k in ("random_bytes", "empty_file", "empty_dir", "text", "broken_idx"))]
    if field == "hf":
        return [missing, ("a file", w["text"]), ("an empty folder", w["empty_dir"]),
                *((k, w[k]) for k in ("bert", "gpt2_no_tokenizer", "hf_garbage_config", "hf_truncated")),
                ("an aigc run", w["gpt"])]
    under_file = ("under a file", str(w.paths["text"] / "sub"))
    if field == "out" and name == "demo":  # an existing --out gets a fresh name beside it
        return [under_file]
    if field == "out" and name in NEW_RUN_COMMANDS:
        return [("a file", w["text"]), under_file, ("a run", w[family])]
    if field == "out" and name == "gpt export-hf":
        return [("a file", w["text"]), under_file, ("a run", w["gpt"]), ("a full folder", w["idx"])]
    if field in ("out", "json"):  # a file a command writes
        run_file = checkpoint_file(w.paths["gan"]) if family == "gan" else w.paths["gpt"] / "config.json"
        return [("a folder", w["empty_dir"]), ("under a file", str(w.paths["text"] / "x.out")),
                ("in a missing folder", str(w.root / "no" / "x.out")), ("a file of its run", str(run_file)),
                ("a gan run's config", str(w.paths["gan"] / "config.json")),
                ("a gpt run's tokenizer", str(w.paths["gpt"] / "tokenizer.json"))]
    return []


# Flags that only matter beside others: the base command line is adjusted when they are swept.
COMPANIONS = {("gpt finetune", "source"): {"data": None, "target": "text"},
              ("gpt finetune", "target"): {"data": None, "source": "text"},
              ("gpt finetune", "val_source"): {"val-target": "text"},
              ("gpt finetune", "val_target"): {"val-source": "text"},
              ("gpt eval", "source"): {"target": "text"},
              ("gpt eval", "target"): {"source": "text"},
              # calibration text is read only to rank heads by gradients (or to retrain them)
              ("compress", "calibration_data"): {"importance": "=taylor", "prune-heads": "=0.5"}}


STRING_VALUES = {"metrics": ["", ",", "perplexity,nope", "bleu,perplexity"], "template": ["no placeholder", ""],
                 "stop": [""], "prompt": ["\u2603 snowman", "ZZZ"], "host": ["", "no such host", "256.1.1.1"],
                 "api_key": ["", "   "], "tracker": ["", ",", "mlflow", "none,wandb", "tensorboard,nope"],
                 "box": ["", "1,2,3", "a,b,c,d", "0,0,0,4", "20,20,10,10", "-1,0,4,4"],
                 "augment": ["", ",", "flip", "translation,", "cutout,cutout", "none,cutout"]}


def wrong_values(w: World, name: str, field: str) -> list[tuple[str, str]]:
    return path_values(w, name, field) or [(repr(v), v) for v in STRING_VALUES.get(field, [])]


def config_refuses(command, given: dict) -> bool:
    """Whether the command's config refuses these flag values (given as parsed values)."""
    try:
        build_config(command.config, given)
    except UserError:
        return True
    return False


@st.composite
def bad_case(draw, w: World):
    """(command, flag name, wrong value as argv words) for one flag of one command."""
    command = draw(st.sampled_from(COMMANDS))
    name = command_name(command)
    fields = dataclasses.fields(command.config)
    field = draw(st.sampled_from([*fields, "config"]))
    if field == "config":
        return command, "config", draw(st.sampled_from(toml_values(w, command)))
    base, _ = _field_type(command.config, field)
    flag = flag_name(field.name)
    choices = field.metadata.get("choices")
    if base is bool:
        return command, field.name, [f"{flag}=maybe"]
    if choices:
        return command, field.name, [flag, draw(st.sampled_from(["nope", "CPU", ""]))]
    if base in (int, float):
        words = ["abc", "", "1,5", "0x10", "--"] + (["1.5", "nan", "inf"] if base is int else ["nan", "inf", "-inf",
                                                                                               "1e999", "-nan"])
        number = draw(st.one_of(
            st.sampled_from(words),
            st.sampled_from([str(HUGE), str(-HUGE)]) if base is int else st.nothing(),
            st.sampled_from([-(2**31), -1, 0, 1, 2**40]).map(str),
            st.floats(-1e6, 1e6).map(repr) if base is float else st.integers(-1000, 3).map(str)))
        try:
            value = base(number)
        except ValueError:
            value = None  # a wrong type: argparse refuses it
        if value is not None and not config_refuses(command, {**base_config_values(w, command), field.name: value}):
            number = str(HUGE) if base is int else "nan"  # it may be valid (and start work): use one that is not
        return command, field.name, [flag, number]
    values = [v for _, v in wrong_values(w, name, field.name)]
    if not values:  # a flag with no wrong path: a usage error instead
        return command, field.name, [flag]
    return command, field.name, [flag, draw(st.sampled_from(values))]


def base_config_values(w: World, command) -> dict:
    """The base command line's values, parsed, for asking the config whether a number is refused."""
    fields = {flag_name(f.name)[2:]: f for f in dataclasses.fields(command.config)}
    out = {}
    for flag, text in base_flags(w)[command_name(command)].items():
        field = fields[flag]
        base, _ = _field_type(command.config, field)
        out[field.name] = base(text) if base in (int, float, str) else text
    return out


def toml_values(w: World, command) -> list[list[str]]:
    folder = w.paths["root_tomls"]
    name = command_name(command).replace(" ", "_")
    return [["--config", str(folder / f"{name}_{kind}.toml")] for kind in TOML_KINDS] + \
        [["--config", w["random_bytes"]], ["--config", w["empty_dir"]], ["--config", str(w.root / "missing.toml")]]


TOML_KINDS = ("bool_for_number", "string_for_number", "number_for_string", "unknown_key", "not_toml", "nan_float",
              "list_value", "latin1")


def write_tomls(w: World) -> None:
    """Per command: TOML files with one wrong value each (written once, part of the hashed tree)."""
    folder = w.root / "tomls"
    folder.mkdir(exist_ok=True)
    for command in COMMANDS:
        name = command_name(command).replace(" ", "_")
        fields = dataclasses.fields(command.config)
        numbers = [f.name for f in fields if _field_type(command.config, f)[0] in (int, float)
                   and not f.metadata.get("parse")]
        floats = [f.name for f in fields if _field_type(command.config, f)[0] is float]
        strings = [f.name for f in fields if _field_type(command.config, f)[0] is str]
        typed = (numbers or strings)[0]  # a field whose TOML value must be a number (or else a string)
        files = {
            "bool_for_number": f"{typed} = true\n",
            "string_for_number": f'{typed} = "many"\n' if numbers else f"{typed} = 1.5\n",
            "number_for_string": f"{strings[0]} = 5\n",
            "unknown_key": "no_such_option = 1\n",
            "not_toml": "this is = = not toml\n",
            "nan_float": f"{(floats or [typed])[0]} = nan\n",
            "list_value": f"{typed} = [1, 2]\n",
        }
        for kind, text in files.items():
            (folder / f"{name}_{kind}.toml").write_text(text)
        (folder / f"{name}_latin1.toml").write_bytes("# caf\xe9\nseed = 1\n".encode("latin-1"))
    w.paths["root_tomls"] = folder


# ------------------------------------------------------------------------------ one case

def run_case(w: World, command, field: str, words: list[str]) -> tuple[int, str, str]:
    flags = dict(base_flags(w)[command_name(command)])
    flags.pop(field.replace("_", "-"), None)
    for flag, value in COMPANIONS.get((command_name(command), field), {}).items():
        if value is None:
            flags.pop(flag)
        else:  # a world path, or "=" and a literal value
            flags[flag] = value[1:] if value.startswith("=") else w[value]
    argv = command_name(command).split()
    for flag, value in flags.items():
        argv += [f"--{flag}"] if value is None else [f"--{flag}", value]
    argv += words
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
        except BaseException:  # noqa: BLE001 - any escape is the bug the sweep looks for
            status = "raised"
            err.write(traceback.format_exc())
    return status, err.getvalue(), " ".join(argv)


def check_case(w: World, command, field: str, words: list[str]) -> None:
    before = snapshot(w.root)
    status, err, argv = run_case(w, command, field, words)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, f"{argv}\nexit {status}\n{err}"
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]) and "Traceback" not in err, f"{argv}\n{err}"
    after = snapshot(w.root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{argv}\nchanged files: {changed}"


@pytest.fixture(scope="module")
def sweep_world(world) -> World:
    write_tomls(world)
    return world


def test_every_flag_is_swept(sweep_world):
    """Each text flag of each command has wrong values to try (a new flag needs some here)."""
    for command in COMMANDS:
        for field in dataclasses.fields(command.config):
            base, _ = _field_type(command.config, field)
            if base is str and not field.metadata.get("choices"):
                assert wrong_values(sweep_world, command_name(command), field.name), \
                    f"{command_name(command)} {flag_name(field.name)} has no wrong values in the sweep"


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_bad_input_sweep(sweep_world, data):
    command, field, words = data.draw(bad_case(sweep_world))
    check_case(sweep_world, command, field, words)


@pytest.mark.parametrize("name", [command_name(c) for c in COMMANDS])
def test_every_wrong_path_of(sweep_world, name):
    """Deterministically, every wrong path and string value of every flag of one command."""
    w = sweep_world
    command = next(c for c in COMMANDS if command_name(c) == name)
    failures = []
    for field in dataclasses.fields(command.config):
        for label, value in wrong_values(w, name, field.name):
            failures += _failure(w, command, field.name, [flag_name(field.name), value], label)
    for words in toml_values(w, command):
        failures += _failure(w, command, "config", words, Path(words[1]).name)
    assert not failures, "\n\n".join(failures)


def _failure(w: World, command, field: str, words: list[str], label: str) -> list[str]:
    try:
        check_case(w, command, field, words)
    except AssertionError as exc:
        _restore_scratch(w)
        return [f"KEY {(command_name(command), field, label)!r}\n{str(exc)[-1500:]}"]
    return []


def _restore_scratch(w: World) -> None:
    """After a failed case: remove what it left in the scratch folders, so the next case starts clean."""
    for folder in (w.paths["scratch"], w.paths["cwd"]):
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
