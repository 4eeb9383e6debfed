"""chain: runs the real Chain of Diffusion (generate with CFG, finetune on the result, repeat)."""
