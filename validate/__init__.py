"""validate: measure trait statistics of chain runs and check the theory against them."""
