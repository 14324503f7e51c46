"""feq_lab.export"""
