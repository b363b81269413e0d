"""What `ray job submit` runs: nanogpt-ray's train command, with nanoGPT's argument syntax.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python -m jobs.train configs/train_shakespeare_char.py --num_workers=2
"""

import sys

from nanogpt_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
