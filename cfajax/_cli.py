"""The `cfajax` command line."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="cfajax", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  demo = commands.add_parser(
      "demo", help="attack all 1,797 scikit-learn digits with a PCA generator (no download)")
  demo.add_argument("--latent-dim", type=int, default=16)
  args = parser.parse_args(argv)

  if args.command == "demo":
    from cfajax._demo import run_demo
    print(json.dumps(run_demo(args.latent_dim), indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
