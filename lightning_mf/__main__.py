"""`python -m lightning_mf` is the `lightning-mf` console script."""

from lightning_mf.cli import main

if __name__ == "__main__":
    main()
