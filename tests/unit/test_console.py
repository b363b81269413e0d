"""What the console tells a person: every key of every command described in --help, the closest command for a typo."""

import pytest

from nanogpt_ray.cli import COMMANDS, main


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_key_of_every_command_has_a_description_in_help(command, capsys):
    assert main([command, "--help"]) == 0
    key_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  --")]
    assert len(key_lines) >= 3
    undocumented = [line.split("=")[0].strip() for line in key_lines if "  " not in line.strip()]
    assert not undocumented, f"nanogpt-ray {command} --help leaves these keys undescribed: {undocumented}"


def test_a_mistyped_command_names_the_closest_one(capsys):
    assert main(["trian", "--max_iters=1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'train'?" in err and len(err.strip().splitlines()) == 1


def test_sample_help_gives_the_prompts_file_schema(capsys):
    main(["sample", "--help"])
    out = capsys.readouterr().out
    assert "'prompt'" in out and "'id'" in out and ".jsonl" in out
