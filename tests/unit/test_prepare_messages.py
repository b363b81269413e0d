"""`nanogpt-ray prepare` bad-input lines through the CLI (exit 2, one line, nothing written) for the cases the main
prepare tests leave out: invalid JSON, a first record after blank lines (its byte offset, not 0), too few documents
for a val split, and an unwritable data_root for every dataset. No Ray: --parallel=False."""

import os
import pathlib

import pytest

from nanogpt_ray import cli


def run_cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(["prepare", *args, "--parallel=False", "--progress=False"])
    return rc, capsys.readouterr().err


def assert_error(capsys, out_dir: pathlib.Path, expected: str, *args: str) -> None:
    rc, err = run_cli(capsys, *args)
    assert rc == 2, err
    assert err.strip().splitlines() == [f"nanogpt-ray prepare: error: {expected}"]
    assert not out_dir.exists() or os.listdir(out_dir) == []


@pytest.mark.parametrize("content, byte", [('{"text": "fine"}\n{"text": oops}\n', 17),  # found while tokenizing
                                           ('\n\n{"text": oops}\n', 2)])  # the first-record check, after blank lines
def test_invalid_json_names_the_file_and_byte(tmp_path, capsys, content, byte):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert_error(capsys, tmp_path / "data" / "text", f"{bad} (byte {byte}): a line that is not valid JSON",
                 "text", f"--input={bad}", f"--data_root={tmp_path / 'data'}")


def test_non_utf8_first_record_after_blank_lines_gives_the_file_offset(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'\n\n{"text": "caf\xe9"}\n')  # \xe9 is byte 15 of the file (13 of its line)
    assert_error(capsys, tmp_path / "data" / "text",
                 f"{bad} is not UTF-8 (byte 15); pass --errors=replace to substitute U+FFFD",
                 "text", f"--input={bad}", f"--data_root={tmp_path / 'data'}")


def test_too_few_documents_for_a_val_split(tmp_path, capsys):
    one = tmp_path / "one.txt"
    one.write_text("a single document cannot fill both splits")
    rc, err = run_cli(capsys, "text", f"--input={one}", f"--data_root={tmp_path / 'data'}", "--val_fraction=0.001")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "no document of 1 fell in the val split; raise --val_fraction (now 0.001)" in err
    assert os.listdir(tmp_path / "data" / "text") == []


@pytest.mark.parametrize("dataset", ["text", "shakespeare_char", "shakespeare"])
def test_unwritable_data_root_for_every_dataset(tmp_path, capsys, shakespeare_path, dataset):
    blocker = tmp_path / "a_file"
    blocker.write_text("data_root's parent is a file, so the output folder cannot be made (root ignores chmod)")
    data_root = blocker / "data"
    rc, err = run_cli(capsys, dataset, f"--input={shakespeare_path}", f"--data_root={data_root}")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"nanogpt-ray prepare: error: cannot write to {data_root / dataset}: ")
    assert err.strip().endswith("; choose another --data_root")
    assert blocker.read_text().startswith("data_root's parent")
