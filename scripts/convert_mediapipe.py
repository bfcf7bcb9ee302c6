"""Convert the face models bundled in the mediapipe wheel to ONNX, once, under LIPSYNC_HOME.

The ``onnx`` landmarker (``--landmarker onnx``) runs these files; it converts them itself on
first use when the ``convert`` extra is installed, so this script is for a machine that
should be prepared ahead (or where the converter is only installed for the occasion).

    .venv/bin/python scripts/convert_mediapipe.py [--force] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="convert even if up to date")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    args = parser.parse_args()

    from lipsync.errors import LipsyncError
    from lipsync.landmarkers.face_models import convert_face_models, face_models_dir

    try:
        record = convert_face_models(force=args.force)
    except LipsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    for name, entry in record.items():
        print(f"{name:<28} {entry['file']:<34} sha256 {entry['sha256']}")
    print(f"in {face_models_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
