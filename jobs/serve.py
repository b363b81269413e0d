"""What `serve run` / `serve deploy` / a KubeRay RayService import, and `python -m jobs.serve` runs.

    serve run jobs.serve:app out_dir=out-shakespeare-char          # keys as for `nanogpt-ray serve`
    serve deploy jobs/serve_config.yaml                              # the same, from a Serve config file
    python -m jobs.serve --out_dir=out-shakespeare-char --port=8000  # = nanogpt-ray serve ...
"""

import sys

from nanogpt_ray.cli import main, serve_app


def app(args: dict):
    """Serve's application builder: `args` are ServeConfig keys (Serve passes strings from the command line)."""
    return serve_app(args)


if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
