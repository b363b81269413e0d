"""device.py's peak table: the dense 16-bit tensor peak of each GPU by its CUDA name, every entry with its source."""

import inspect

import pytest

from nanogpt_ray import device
from nanogpt_ray.device import PEAK_FLOPS, peak_flops_for_device

T = 1e12
# CUDA device names as torch.cuda.get_device_name reports them -> the data sheet's dense figure (None: unknown)
PINNED = {
    "NVIDIA GB200": 2500 * T,
    "NVIDIA B200": 2250 * T,
    "NVIDIA GH200 480GB": 989 * T,
    "NVIDIA H200 NVL": 835 * T,
    "NVIDIA H200": 989 * T,
    "NVIDIA H100 NVL": 835 * T,
    "NVIDIA H100 PCIe": 756 * T,
    "NVIDIA H100 80GB HBM3": 989 * T,
    "NVIDIA H800 PCIe": 756 * T,
    "NVIDIA H800": 989 * T,
    "NVIDIA A100-SXM4-80GB": 312 * T,
    "NVIDIA A100-PCIE-40GB": 312 * T,
    "NVIDIA A100 80GB PCIe": 312 * T,
    "NVIDIA A800-SXM4-80GB": 312 * T,
    "NVIDIA L40S": 362 * T,
    "NVIDIA L40": 181 * T,
    "NVIDIA L4": 121 * T,
    "NVIDIA A10G": None,
    "NVIDIA A10": 125 * T,
    "NVIDIA GeForce RTX 4090": 165 * T,
    "NVIDIA GeForce RTX 3090": 71 * T,
    "NVIDIA GeForce RTX 3090 Ti": None,
    "NVIDIA RTX A4000": None,
    "Tesla V100S-PCIE-32GB": 130 * T,
    "Tesla V100-PCIE-16GB": 112 * T,
    "Tesla V100-SXM2-16GB": 125 * T,
    "Tesla T4": 65 * T,
    "Some Future Accelerator": None,
}


@pytest.mark.parametrize("name", PINNED)
def test_each_gpu_gets_its_data_sheet_peak(name):
    assert peak_flops_for_device(name) == PINNED[name]


def test_every_entry_is_pinned_and_names_its_source():
    pinned = {peak_flops_for_device(name) for name in PINNED}
    assert {flops for _, flops in PEAK_FLOPS} <= pinned
    source = inspect.getsource(device)
    table = source[source.index("PEAK_FLOPS = ("):source.index("\n)\n", source.index("PEAK_FLOPS = ("))]
    entries = [line for line in table.splitlines() if line.strip().startswith("(r")]
    assert len(entries) == len(PEAK_FLOPS)
    for line in entries:
        comment = line.partition("#")[2]
        assert "data sheet" in comment or "white paper" in comment, line
