"""feq_lab.data"""
