"""Offline developer tools of the repository (not installed with deepres: ``setup.cfg`` lists the
packages it installs). Each imports deepres; deepres never imports them."""
