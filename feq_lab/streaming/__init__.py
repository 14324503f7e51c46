"""feq_lab.streaming"""
