# The report: every stage's artifacts rendered into one self-contained HTML file and a PDF.


rule report_html:
    input:
        unpack(get_report_inputs),
        templates=sorted(glob.glob(str(Path(workflow.basedir) / "report/templates/**/*.j2"), recursive=True)),
        css="report/style.css",
    output:
        html=report(
            "results/report/report.html",
            caption="../report/captions/report.rst",
            category="Report",
            labels={"file": "report.html"},
        ),
    params:
        # the report prints the effective config (provenance), so any config change re-renders it
        config=config,
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
