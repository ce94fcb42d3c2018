"""The Neural Mean ODE: the infinite-depth limit of the residual stack (DESIGN §2)."""
