"""The definition layer: declarations, the semantics contract's building blocks, the plan.

Pure Python: nothing here imports pyflink or pyspark.
"""
