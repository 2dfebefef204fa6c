"""Planning a run before it trains: crop, batch, mask cell, memory and time.

:mod:`~.training_plan` turns a dataset fingerprint (:mod:`medcontext.data.fingerprint`, which
also picks the target spacing), the model's crop rules and a memory budget into a
:class:`~.training_plan.TrainingPlan`; :mod:`~.run_planner` gathers those inputs from a
:class:`~medcontext.engine.config.TrainConfig`, measures one step for the time estimate and
writes the planned values back into the config.
"""
