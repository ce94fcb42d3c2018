"""Training comparisons and convergence studies: ResNets against their mean-ODE limit."""
