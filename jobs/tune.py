"""`ray job submit --working-dir . -- python -m jobs.tune configs/sweep_shakespeare_char_cpu.py [--key=value]`."""

import sys

from nanogpt_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
