"""``deepres study --preset shapes``: the joint (L, M, D) limit of Chaintron, Chizat & Maass (2026).

config (the preset and its units), network (prefix-coupled embeddings, the GD steps),
measure (one unit), analysis (errors, the reference rule, fits), plots, report (tables, summary),
run (run_shapes), cli (the --shapes-* options).
"""
