# QC: one HTML page per run covering every stack (fm2s.report.write_run_report): raw and
# denoised images, an intensity profile, noise per plane before and after, seconds per plane,
# settings and provenance. Self-contained (images embedded), and part of `snakemake --report`.


rule qc_report:
    input:
        stores=[STORE.format(name=name) for name in INPUTS],
        # reformat_ome_zarr rewrites stores in place: wait for it, and rerun after it.
        formats=[FORMAT.format(name=name) for name in INPUTS],
        # The demo's input only (see source_input): the page reads the others from params.
        sources=[str(p) for n, p in INPUTS.items() if n == DEMO_NAME],
    output:
        report(
            REPORT,
            caption="../report/qc_report.rst",
            category="QC",
            labels={"page": "QC report"},
        ),
    log:
        log_path("qc_report", "qc_report"),
    benchmark:
        benchmark_path("qc_report", "qc_report")
    conda:
        "../../envs/fm2s.yaml"
    resources:
        mem_mb=QC["mem_mb"],
        runtime=QC["runtime"],
    params:
        stores={name: STORE.format(name=name) for name in INPUTS},
        sources={name: str(path) for name, path in INPUTS.items()},
        series=READING["series"],
        pages_as=READING["pages_as"],
        noise_planes=QC["noise_planes"],
        zoom=QC["zoom"],
        job_benchmarks={
            name: [
                benchmark_path("train_groups", f"{name}/training-{job}")
                for job in training_ids(name)
            ]
            + [
                benchmark_path("denoise_chunk", f"{name}/chunk-{chunk}")
                for chunk in chunk_ids(name)
            ]
            for name in INPUTS
        },
    script:
        "../scripts/qc_report.py"
