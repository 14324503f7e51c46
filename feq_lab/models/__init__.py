"""feq_lab.models"""
