"""feq_lab.training"""
