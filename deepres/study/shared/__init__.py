"""What every study shares: tasks, fits, the results store, the unit loop, executors, reports."""
