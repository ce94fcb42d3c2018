"""GPU cost modelling of the Triton kernels, without a GPU (not part of the installed package).

* :mod:`.compile_check` — compile every kernel variant the launcher's plans
  can launch for sm_90a and report registers, spills, shared memory and the
  hot loops' SASS; with ``--cost``, estimated step times.
* :mod:`.sass` — read the SASS: instructions, control bits, loops.
* :mod:`.cost_model` — a cycle model of a hot loop and of a launch.

Run from the repository root (see README.md here)::

    python -m tools.kernel_cost.compile_check --cost --json bench/results/compile_check_sm90.json

They import from ``deepres`` (the plans in ``deepres.kernels.plan``, the
kernels through the launcher's table ``deepres.engines.triton.launch.KERNELS``);
nothing in ``deepres`` imports them. Importing these modules compiles
nothing: the Triton compiler runs only when ``compile_check`` is run.
"""
