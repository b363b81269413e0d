"""Prepare the openwebtext dataset into this folder: train.bin, val.bin, meta.json.

    python data/openwebtext/prepare.py [--input=...] [--key=value ...]   (same as: nanogpt-ray prepare openwebtext ...)
"""
import os
import sys

from nanogpt_ray.cli import main

here = os.path.dirname(os.path.abspath(__file__))
sys.exit(main(["prepare", "openwebtext", f"--data_root={os.path.dirname(here)}", *sys.argv[1:]]))
