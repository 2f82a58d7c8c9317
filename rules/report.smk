# The report: every stage's artifacts rendered into one self-contained HTML file and a PDF.


rule report_html:
    input:
        unpack(get_report_inputs),
        base=workflow_file("report/templates/base.html.j2"),
        templates=sorted(
            glob.glob(str(WORKFLOW_DIR / "report/templates/**/*.j2"), recursive=True)
        ),
        css=workflow_file("report/style.css"),
    output:
        html=report(
            "results/report/report.html",
            caption="../report/captions/report.rst",
            category="Report",
            labels={"file": "report.html"},
        ),
    log:
        "logs/report_html/report_html.log",
    benchmark:
        "benchmarks/report_html/report_html.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        # the report prints the effective config (provenance), so any config change re-renders it
        config=config,
    script:
        "../scripts/report_html.py"


rule report_pdf:
    input:
        html="results/report/report.html",
    output:
        pdf=report(
            "results/report/report.pdf",
            caption="../report/captions/report.rst",
            category="Report",
            labels={"file": "report.pdf"},
        ),
    log:
        "logs/report_pdf/report_pdf.log",
    benchmark:
        "benchmarks/report_pdf/report_pdf.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    script:
        "../scripts/report_pdf.py"
