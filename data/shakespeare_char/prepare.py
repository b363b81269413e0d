"""Prepare the shakespeare_char dataset into this folder: train.bin, val.bin, meta.json.

    python data/shakespeare_char/prepare.py [--input=...] [--key=value ...]   (same as: nanogpt-ray prepare shakespeare_char ...)
"""
import os
import sys

from nanogpt_ray.cli import main

here = os.path.dirname(os.path.abspath(__file__))
sys.exit(main(["prepare", "shakespeare_char", f"--data_root={os.path.dirname(here)}", *sys.argv[1:]]))
