import contextlib
import dataclasses
import functools
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aigc.cli import COMMANDS, build_parser
from aigc.config import build_config, format_default, parse_duration
from aigc.errors import UserError
from conftest import assert_one_line_error


def test_help_does_not_import_torch():
    # `aigc --help` must stay fast: building the whole parser imports no heavy library.
    code = "import sys; from aigc.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@functools.cache
def help_entries(command) -> dict[str, str]:
    """Each flag of ``command`` -> its own entry in --help (flag, metavar, help), whitespace collapsed."""
    args = [command.name] if command.area is None else [command.area, command.name]
    output = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(output):
        build_parser().parse_args([*args, "--help"])
    assert exit_info.value.code == 0
    entries: dict[str, list[str]] = {}
    flag = None
    for line in output.getvalue().splitlines():
        if line.startswith("  -"):  # an option's first line; its help continues on deeper-indented lines
            flag = line.split()[0].rstrip(",")
            entries[flag] = [line]
        elif line.startswith("   ") and flag is not None:
            entries[flag].append(line)
        else:
            flag = None
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in entries.items()}


def every_flag():
    for command in COMMANDS:
        for field in dataclasses.fields(command.config):
            yield pytest.param(command, field, id=f"{command.area} {command.name} --{field.name}")


@pytest.mark.parametrize("command, field", every_flag())
def test_every_flag_is_in_the_help_with_its_default(command, field):
    entry = help_entries(command)["--" + field.name.replace("_", "-")]
    if field.default is None:  # optional fields say what leaving them out means
        return
    default = format_default(field.default).replace("%%", "%")
    # The parser adds "(default: ...)"; a help text that words its default itself must name the right one.
    stated = re.search(rf"default:? {re.escape(default)}\b", entry)
    assert entry.endswith(f"(default: {default})") or stated, entry


def test_unknown_command_is_one_line(run_cli):
    status, _, err = run_cli("gan", "paint")
    assert_one_line_error(status, err, "invalid choice")


def test_durations():
    assert parse_duration("90s") == 90 and parse_duration("2m") == 120 and parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_toml_values_are_type_checked(tmp_path):
    from aigc.gan.config import GanTrainConfig
    (tmp_path / "c.toml").write_text('batch_size = "many"\n')
    with pytest.raises(UserError, match="batch_size"):
        build_config(GanTrainConfig, {"config": str(tmp_path / "c.toml")})
    (tmp_path / "c.toml").write_text('loss = "l1"\n')
    with pytest.raises(UserError, match="choose from"):
        build_config(GanTrainConfig, {"config": str(tmp_path / "c.toml")})
    with pytest.raises(UserError, match="not found"):
        build_config(GanTrainConfig, {"config": str(tmp_path / "missing.toml")})


def test_tests_keep_out_of_the_users_cache():
    from aigc.data.text import cache_dir as corpus_cache
    from aigc.metrics.evaluator import cache_dir as evaluator_cache

    users = Path.home() / ".cache"
    for folder in (corpus_cache(), evaluator_cache()):
        assert not folder.resolve().is_relative_to(users.resolve()), folder


def test_the_demo_stops_each_part_at_its_time(run_cli, tmp_path, one_thread):
    """On a slow CPU the demo's parts end by time, not by steps, and say how many steps they made."""
    status, out, _ = run_cli("demo", "--out", tmp_path / "demo", "--gan-steps", "100000", "--gan-time", "1s",
                             "--gpt-iters", "100000", "--gpt-time", "1s")
    assert status == 0
    gan_steps = int(re.search(r"digits after (\d+) steps", out).group(1))
    gpt_steps = int(re.search(r"GPT, (\d+) steps", out).group(1))
    assert 0 < gan_steps < 100000 and 0 < gpt_steps < 100000
    assert (tmp_path / "demo" / "digits.png").is_file()
