# diffusion-report: regenerate the report on diffusion models from one config.
# Stages live in rules/*.smk; all logic is in the importable package scripts/diffusion_report.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/forward.smk"
include: "rules/theory.smk"
include: "rules/ddim.smk"
include: "rules/t2i.smk"
include: "rules/p2p.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_outputs,
    default_target: True
