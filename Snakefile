# diffusion-report: regenerate the report on diffusion models from one config.
# Stages live in rules/*.smk; all logic is in the importable package scripts/diffusion_report.

import os

from snakemake.utils import min_version

min_version("9.0")


# The workflow's defaults, found beside this file (also with -d elsewhere and as a module); shown
# relative to the working directory ("config.yaml" when running in the workflow's folder).
configfile: os.path.relpath(os.path.join(workflow.current_basedir, "config.yaml"))


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/forward.smk"
include: "rules/theory.smk"
include: "rules/ddim.smk"
include: "rules/t2i.smk"
include: "rules/p2p.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs,
