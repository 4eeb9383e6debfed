"""Write a validation's ``calibration.json`` as the calibration shipped in the package, with how it was made.

The shipped calibration (``qtm/data/calibration_digits.json``) is ``qtm simulate``'s default and ``chain validate
--calibration shipped``; this adds to its provenance the commands that made it (``made_by``) and what it was
tested on (``warning``), and writes it atomically through :func:`qtm.calibration.write_calibration` (which checks
it as a reader would).

Usage: ``python tools/ship_calibration.py runs/calibration-digits/calibration.json --made-by TEXT --warning TEXT``
"""

from __future__ import annotations

import argparse
import dataclasses
from importlib import resources

from qtm.calibration import SHIPPED, read_calibration, write_calibration


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibration", help="calibration.json written by chain validate --guidance shared")
    parser.add_argument("--made-by", required=True, help="the commands that made it")
    parser.add_argument("--warning", required=True, help="what it was fitted and tested on, in a sentence")
    parser.add_argument("--out", default=None, help="where to write it (default: the package's shipped file)")
    args = parser.parse_args(argv)
    calibration = read_calibration(args.calibration)
    provenance = {**calibration.provenance, "made_by": args.made_by, "warning": args.warning}
    target = args.out if args.out is not None else resources.files("qtm") / "data" / SHIPPED
    write_calibration(target, dataclasses.replace(calibration, provenance=provenance, source={}))
    print(f"wrote {target} (sha256 of the source {calibration.source['sha256'][:12]})")


if __name__ == "__main__":
    main()
