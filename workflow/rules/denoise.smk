# Denoise, in two steps. train_groups: each job trains the networks of consecutive groups of
# planes of a channel (fm2s.engine.plan_groups; at most planes_per_job planes in all, see
# fm2s.jobs.JobPlan) into a model file, kept as an artifact.
# denoise_chunk: one job per chunk of planes_per_job consecutive planes, in (t, c, z) order,
# applies the models of its planes' groups (inference only) and writes one chunk file
# (temporary: removed once the store is assembled). Seeds come from the base seed and the
# planes' (t, c, z) or the group's index, so the result does not depend on planes_per_job.


rule train_groups:
    input:
        source_input,
    output:
        MODEL,
    log:
        log_path("train_groups", "{name}/training-{training}"),
    benchmark:
        benchmark_path("train_groups", "{name}/training-{training}")
    conda:
        "../../envs/fm2s.yaml"
    threads: DENOISE["threads"]
    resources:
        gpu=DENOISE["gpu"],
        mem_mb=DENOISE["mem_mb"],
        runtime=DENOISE["runtime"],
    params:
        # What decides the model: changing any of these retrains it (and what depends on it).
        source=source_path,
        groups=training_groups,
        planes=training_planes,
        settings=SETTINGS.to_json(),
        options=DENOISE_OPTIONS,
        fm2s_version=fm2s.__version__,
        input_stamp=source_stamp,
    script:
        "../scripts/train_groups.py"


rule denoise_chunk:
    input:
        source=source_input,
        models=chunk_models,
    output:
        temp(CHUNK),
    log:
        log_path("denoise_chunk", "{name}/chunk-{chunk}"),
    benchmark:
        benchmark_path("denoise_chunk", "{name}/chunk-{chunk}")
    conda:
        "../../envs/fm2s.yaml"
    threads: DENOISE["threads"]
    resources:
        gpu=DENOISE["gpu"],
        mem_mb=DENOISE["mem_mb"],
        runtime=DENOISE["runtime"],
    params:
        # What decides the result besides the models: changing any of these reruns the chunk.
        source=source_path,
        planes=chunk_planes,
        settings=SETTINGS.to_json(),
        options=DENOISE_OPTIONS,
        fm2s_version=fm2s.__version__,
        input_stamp=source_stamp,
    script:
        "../scripts/denoise_chunk.py"
