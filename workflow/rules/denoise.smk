# Denoise: one job per chunk of planes_per_job consecutive planes, in (t, c, z) order. Each job
# reads its planes straight from the input and writes one chunk file (temporary: removed once
# the store is assembled). Plane (t, c, z) gets seed plane_seed(seed, (t, c, z)), so the
# result does not depend on planes_per_job.


rule denoise_chunk:
    input:
        source_input,
    output:
        temp(CHUNK),
    params:
        # What decides the result: changing any of these reruns the chunk and the assembly.
        source=source_path,
        planes=chunk_planes,
        settings=SETTINGS.to_json(),
        options=DENOISE_OPTIONS,
        fm2s_version=fm2s.__version__,
        input_stamp=source_stamp,
    log:
        log_path("denoise_chunk", "{name}/chunk-{chunk}"),
    benchmark:
        benchmark_path("denoise_chunk", "{name}/chunk-{chunk}")
    threads: DENOISE["threads"]
    resources:
        gpu=DENOISE["gpu"],
        mem_mb=DENOISE["mem_mb"],
        runtime=DENOISE["runtime"],
    conda:
        "../../envs/fm2s.yaml"
    script:
        "../scripts/denoise_chunk.py"
