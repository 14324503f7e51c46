"""feq_lab.profiling"""
