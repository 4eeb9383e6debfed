"""qtm: quantitative-genetics theory of model collapse in the Chain of Diffusion.

The theory layer needs numpy, scipy and numba only; it never imports torch.
"""

__version__ = "0.1.0"
