"""feq_lab.evaluation"""
