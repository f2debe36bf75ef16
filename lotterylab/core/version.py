"""The package version: one source for `lotterylab --version`, the wheel's metadata and what results record."""

__version__ = "0.1.0"
