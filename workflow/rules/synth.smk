# The built-in demo input: a small synthetic time-lapse z-stack (only when no inputs are set).


rule synth_demo:
    output:
        DEMO["path"],
    log:
        log_path("synth_demo", "demo"),
    benchmark:
        benchmark_path("synth_demo", "demo")
    localrule: True
    conda:
        "../../envs/fm2s.yaml"
    params:
        options=[f"--{key}={DEMO[key]}" for key in ("t", "c", "z", "size", "seed")],
    script:
        "../scripts/synth_demo.py"
