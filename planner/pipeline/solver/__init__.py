"""CP-SAT model of the topology, in small units: variables, constraints, objective, solve."""

from planner.pipeline.solver.solve import SolveResult, solve

__all__ = ["SolveResult", "solve"]
