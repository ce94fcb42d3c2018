"""The phase study: the phase diagram of residual multiplier and learning rate, in depth and in dimension."""
