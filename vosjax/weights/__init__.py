"""Importing the authors' PyTorch weights into vosjax's flax.nnx modules.

`layout` holds the only layout conversions (NCHW/OIHW -> NHWC/HWIO, weight normalisation,
BatchNorm statistics) and the strict name/shape bookkeeping; one module per released model maps
its state_dict names onto the vosjax module that the released module corresponds to.
"""
