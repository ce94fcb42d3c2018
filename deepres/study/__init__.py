"""Studies of deep ResNets against their mean-ODE limit.

* :mod:`deepres.study.convergence`: the convergence study (presets, coupled
  comparisons, its sweep, cost estimate, analysis, lazy sweep, plots, report);
* :mod:`deepres.study.phase`: the phase study (the family of parameterizations,
  what one unit measures, analysis, plots, report);
* :mod:`deepres.study.shared`: what both use (tasks, fits, the results store and
  its files, the unit loop and its executors, ``study.json``, the environment);
* :mod:`deepres.study.cli`: the ``deepres study`` command, which runs either.
"""
