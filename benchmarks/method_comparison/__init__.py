"""The method-comparison harness (``run.py``): settings, plan, estimates, runner, collection, probe and tables."""
