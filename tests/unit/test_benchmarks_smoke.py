"""Every benchmark that starts no Ray runs with --smoke and prints its table (the table: tests/benchmark_smoke.py)."""

import pytest

from tests.benchmark_smoke import SMOKE, benchmark_scripts, run_smoke, scripts


def test_every_benchmark_has_a_smoke_entry():
    missing = [name for name in benchmark_scripts() if name not in SMOKE]
    assert not missing, f"add {missing} to SMOKE in tests/benchmark_smoke.py (and give the script a --smoke flag)"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", scripts(starts_ray=False))
def test_benchmark_smoke_runs_and_prints_its_rows(name, tmp_path):
    run_smoke(name, tmp_path, timeout_s=280)
