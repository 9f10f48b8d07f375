"""Scenario files shipped with svmpmu: see :func:`svmpmu.scenarios`."""
