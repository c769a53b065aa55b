import dataclasses
import subprocess
import sys

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


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.area} {c.name}")
def test_every_command_has_help_with_defaults(command, capsys):
    args = [command.name] if command.area is None else [command.area, command.name]
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*args, "--help"])
    assert exit_info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(command.config):
        flag = "--" + field.name.replace("_", "-")
        assert flag in shown
        if field.default is not None:  # optional fields say what leaving them out means
            assert f"(default: {format_default(field.default)})".replace("%%", "%") in shown or "default" in field.metadata["help"], flag


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
