"""What a finished run is read for: loading, LMC barriers, Hessian sharpness, signs, memorization.

Imports the layers below.
"""
