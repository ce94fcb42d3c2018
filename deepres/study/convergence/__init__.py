"""The convergence study: ResNets against their mean-ODE limit, the rates in L, M, D and α, the lazy sweep."""
