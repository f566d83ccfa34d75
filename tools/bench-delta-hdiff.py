#!/usr/bin/env python3
"""HDiffPatch for tools/bench-delta, through the PyPI package hdiffpatch 2.6.0 (Python binding of
HDiffPatch's C++ library; run it with the Python of the virtualenv bench-delta makes).

  bench-delta-hdiff.py diff OLD NEW OUT [--window N] [--big-cache-match 0|1] [--level L]
                                        [--threads T] [--validate 0|1]
  bench-delta-hdiff.py patch OLD PATCH OUT

diff:  OUT = hdiffpatch.diff(old, new, Lzma2Config(level=L, window=N, threads=T),
                             validate=bool(V), big_cache_match=bool(B))
       defaults: level 9, window 23 (log2 of the LZMA2 dictionary: 23 = 8 MiB, 26 = 64 MiB; 12-30),
       threads 2, big_cache_match 0, validate 0. validate=True (the package's default) applies
       the patch to OLD inside diff() and compares it with NEW; bench-delta applies and compares
       itself, timed apart, so it is off by default here.
patch: OUT = hdiffpatch.apply(old, patch); the codec is read from the patch header.

The API takes and returns whole bytes objects: both files (and the output) are held in memory.
Exit status 0 on success, 1 on an HDiffPatch (or file) error, 2 on a usage error or another
hdiffpatch version than 2.6.0.
"""

import argparse
import importlib.metadata
import sys

import hdiffpatch

WANTED_VERSION = "2.6.0"


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def flag(text):
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError("0 or 1")
    return text == "1"


def main():
    parser = argparse.ArgumentParser(description="HDiffPatch (PyPI hdiffpatch) diff and patch")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("diff", help="OUT = patch turning OLD into NEW")
    d.add_argument("old")
    d.add_argument("new")
    d.add_argument("out")
    d.add_argument("--window", type=int, default=23, help="log2 of the LZMA2 dictionary (12-30)")
    d.add_argument("--big-cache-match", type=flag, default=False, metavar="0|1")
    d.add_argument("--level", type=int, default=9, help="LZMA2 level (0-9)")
    d.add_argument("--threads", type=int, default=2, help="LZMA2 threads (1-64)")
    d.add_argument("--validate", type=flag, default=False, metavar="0|1")
    p = sub.add_parser("patch", help="OUT = OLD with PATCH applied")
    p.add_argument("old")
    p.add_argument("patch")
    p.add_argument("out")
    args = parser.parse_args()

    # The package's __version__ is a placeholder ("0.0.0"): ask the installed distribution.
    version = importlib.metadata.version("hdiffpatch")
    if version != WANTED_VERSION:
        print(f"bench-delta-hdiff: hdiffpatch {version} installed, {WANTED_VERSION} wanted", file=sys.stderr)
        return 2

    try:
        if args.command == "diff":
            config = hdiffpatch.Lzma2Config(level=args.level, window=args.window, threads=args.threads)
            out = hdiffpatch.diff(read(args.old), read(args.new), config,
                                  validate=args.validate, big_cache_match=args.big_cache_match)
            write(args.out, out)
            print(f"hdiffpatch {version} diff: {config}, big_cache_match={args.big_cache_match}, "
                  f"validate={args.validate}: {len(out)} bytes")
        else:
            out = hdiffpatch.apply(read(args.old), read(args.patch))
            write(args.out, out)
            print(f"hdiffpatch {version} apply: {len(out)} bytes written")
    except (hdiffpatch.HDiffPatchError, OSError, ValueError, TypeError, MemoryError) as e:
        print(f"bench-delta-hdiff: {args.command} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
