"""feq_lab's own Hydra sweeper on optuna 5 (`hydra/sweeper=feq_optuna`).

Why not hydra-optuna-sweeper: it pins optuna < 3, whose SQL storage breaks on SQLAlchemy 2.
Modules whose names start with "_" hold the heavy work; Hydra's plugin scan skips them, so every
Hydra app start stays fast.
"""
