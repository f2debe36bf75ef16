"""lotterylab: sparse training research — PaI, iterative pruning, cyclic training and SCULPT-ing."""

__version__ = "0.1.0"
