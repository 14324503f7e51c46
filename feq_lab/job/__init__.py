"""The main job (`python -m feq_lab`): one grid point = prepare → build → train → evaluate →
measure → log. `run.run_job` is the whole job; `config` derives the effective config, its hash
and the flat params; `assess` evaluates and measures a trained model; `baseline` is the
classical STA/LTA row."""
