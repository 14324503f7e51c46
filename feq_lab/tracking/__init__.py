"""feq_lab.tracking"""
