"""The words every layer shares: job options, case fields, the stain report, errors, progress.

Plain types and checks only: nothing here imports another part of dscm.
"""
