"""diffusion_report: the logic behind the diffusion-report Snakemake workflow.

Rules call thin entry scripts in ``scripts/``; everything they do lives in this package so that
it can be imported and tested on its own.
"""

__version__ = "0.1.0"
