"""Diffusion backends behind one interface (see :mod:`chain.backends.base`)."""
