"""Triton kernels for stacks of two-layer-perceptron residual blocks (installed as ``deepres.kernels``)."""
