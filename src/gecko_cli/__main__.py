"""`python -m gecko_cli` is the same as `gecko` (and what `accelerate launch -m` runs)."""

from gecko_cli.cli import main

if __name__ == "__main__":
    main()
