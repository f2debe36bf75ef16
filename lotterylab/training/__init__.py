"""One training step, runs and their methods, checkpoints, results, locks, packing and executors.

Imports lotterylab.core and lotterylab.pruning.
"""
