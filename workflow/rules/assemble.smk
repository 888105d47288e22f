# Reassemble: the chunk files of an input become its OME-Zarr store (pyramid, metadata,
# provenance with the config). Output options (levels, NGFF version, tile) are applied by
# reformat_ome_zarr, which rewrites an existing store from its own full-resolution level: a
# change of output options alone never denoises again.


rule assemble_ome_zarr:
    input:
        source=source_input,
        chunks=chunk_files,
    output:
        directory(STORE),
    log:
        log_path("assemble_ome_zarr", "{name}"),
    benchmark:
        benchmark_path("assemble_ome_zarr", "{name}")
    conda:
        "../../envs/fm2s.yaml"
    resources:
        mem_mb=OUTPUT["mem_mb"],
        runtime=OUTPUT["runtime"],
    params:
        source=source_path,
        settings=SETTINGS.to_json(),
        seed=DENOISE["seed"],
        data_range=DENOISE["data_range"],
        series=READING["series"],
        pages_as=READING["pages_as"],
        fm2s_version=fm2s.__version__,
        input_stamp=source_stamp,
        planes_per_job=PLANES_PER_JOB,
    script:
        "../scripts/assemble_ome_zarr.py"


rule reformat_ome_zarr:
    input:
        store=rules.assemble_ome_zarr.output[0],
    output:
        FORMAT,
    log:
        log_path("reformat_ome_zarr", "{name}"),
    benchmark:
        benchmark_path("reformat_ome_zarr", "{name}")
    conda:
        "../../envs/fm2s.yaml"
    resources:
        mem_mb=OUTPUT["mem_mb"],
        runtime=OUTPUT["runtime"],
    params:
        levels=OUTPUT["levels"],
        ngff_version=OUTPUT["ngff_version"],
        tile=OUTPUT["tile"],
    script:
        "../scripts/reformat_ome_zarr.py"
