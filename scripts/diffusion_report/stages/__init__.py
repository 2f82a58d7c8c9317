"""Stages: one module per stage of the workflow, one function per rule, taking paths and values.

Each rule script in ``scripts/`` calls one function here with ``snakemake.input/output/params``;
stages use core and models and write the artifacts under ``results/<stage>/``.
"""
