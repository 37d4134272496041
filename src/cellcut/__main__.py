"""``python -m cellcut``: the command line (also ``torchrun ... -m cellcut train ...``)."""

from cellcut.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
