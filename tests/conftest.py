"""Shared pytest setup.

This folder is on sys.path, so tests import helpers from `qnets`. Under CI (the ``CI`` environment
variable) hypothesis runs derandomized: the same examples every run, so a CI result is reproducible;
local runs explore new examples each time.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
