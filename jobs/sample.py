"""What `ray job submit` runs to sample a whole prompt file on the cluster's actors.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python -m jobs.sample --out_dir=out-shakespeare-char --prompts=prompts.jsonl --output=samples.jsonl
"""

import sys

from nanogpt_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
