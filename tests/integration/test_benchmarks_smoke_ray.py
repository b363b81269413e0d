"""Every benchmark that starts Ray runs with --smoke and prints its table (the table: tests/benchmark_smoke.py).
Each script starts and stops its own local cluster, one at a time."""

import pytest

from tests.benchmark_smoke import run_smoke, scripts

pytestmark = pytest.mark.ray


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", scripts(starts_ray=True))
def test_ray_benchmark_smoke_runs_and_prints_its_rows(name, tmp_path):
    run_smoke(name, tmp_path, timeout_s=560)
