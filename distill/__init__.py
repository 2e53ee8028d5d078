"""fewstep's distillation side: objectives (Lightning modules), data modules, evaluation and the console apps.

Imports flow distill -> students -> teachers; only distill imports Lightning and Hydra.
"""
