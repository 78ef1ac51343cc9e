"""Regenerates the parity fixtures in tests/data/ by running the official implementations.

  python tools/make_parity_fixtures.py --maskgit=/path/to/google-research/maskgit [--only=NAME]
  /path/to/torch/python tools/make_parity_fixtures.py --open_magvit2=/path/to/Open-MAGVIT2 \
    --only=open_magvit2

Each part (tools/parity/<name>.py) builds an official network at a small size with random
weights (fixed seeds), runs it on fixed inputs and writes one .npz to tests/data/: the params
in the official tree and naming, the inputs and the official outputs. Nothing of the official
code is copied into this repository; its checkout is only put on sys.path while this runs.
The tests (tests/test_parity_*.py) convert those params with `magvit_jax.convert` and compare
our outputs with the official ones.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

TOOLS = pathlib.Path(__file__).resolve().parent
OUT = TOOLS.parent / 'tests' / 'data'
# name -> (module in tools/parity, the checkout it needs).
PARTS = {
  'maskgit_vqgan': ('maskgit_vqgan', 'maskgit'),
  'maskgit_transformer': ('maskgit_transformer', 'maskgit'),
  'open_magvit2': ('open_magvit2', 'open_magvit2'),
  'magvit_3dvq': ('magvit_3dvq', 'magvit'),
  'magvit_transformer': ('magvit_transformer', 'magvit'),
}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--maskgit', help='a checkout of github.com/google-research/maskgit')
  parser.add_argument('--magvit', help='a checkout of github.com/google-research/magvit')
  parser.add_argument(
    '--open_magvit2',
    help='a checkout of github.com/TencentARC/Open-MAGVIT2 (run with a python that has torch)',
  )
  parser.add_argument('--only', choices=sorted(PARTS), help='make one fixture only')
  args = parser.parse_args(argv)
  sys.path.insert(0, str(TOOLS))
  OUT.mkdir(parents=True, exist_ok=True)
  for name, (module, checkout) in PARTS.items():
    if args.only and name != args.only:
      continue
    root = getattr(args, checkout)
    if not root:
      parser.error(f'--{checkout}=PATH is needed for {name}')
    sys.path.insert(0, str(pathlib.Path(root).resolve()))
    path = importlib.import_module(f'parity.{module}').make(OUT)
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
