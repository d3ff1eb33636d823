"""Input and output: TIFF stacks, localization tables, atomic files."""
