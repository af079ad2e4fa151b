"""GMM refinement: one iteration over explicit state, a run directory, and the drivers.

* :mod:`.state` — :class:`~.state.RefinementState` (what one iteration hands the next) and
  :class:`~.state.IterationPlan` (what differs between global, focused and patch refinement).
* :mod:`.loop` — :func:`~.loop.iterate`: per half GMM → shape → align; reconstruct; FSC.
* :mod:`.rundir` — :class:`~.rundir.RunDir`: identity, iteration stores, resume, final outputs.
* :mod:`.global_refine` — :func:`~.global_refine.run_global` (``gmmcore refine``).

Import the submodules directly; this package imports nothing on its own (the plugin reads run
summaries through :mod:`gmmcore.summary` without loading any array backend).
"""
