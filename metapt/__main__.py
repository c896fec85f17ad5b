"""`python -m metapt` (and `torchrun -m metapt`) runs the CLI."""

from metapt.cli import main

if __name__ == "__main__":
    main()
