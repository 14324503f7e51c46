"""Evaluation (EQT protocol, REFERENCE §3): picks from probability traces, metrics, threshold
grids from stored probabilities, the STA/LTA baseline and the evaluation figures.

Modules are imported directly (`feq_lab.evaluation.metrics`, ...): plots pulls in matplotlib and
baseline pulls in obspy, which the core scoring path does not need.
"""
