"""feq_lab.selection"""
