"""GMM refinement: one iteration over explicit state, a run directory, and the drivers.

* :mod:`.state` — :class:`~.state.RefinementState` (what one iteration hands the next) and
  :class:`~.state.IterationPlan` (what differs between global, focused and patch refinement).
* :mod:`.loop` — :func:`~.loop.iterate`: per half GMM → shape → align; reconstruct; FSC.
* :mod:`.rundir` — :class:`~.rundir.RunDir`: identity, iteration stores, resume, final outputs.
* :mod:`.start` — the one iteration-0 writer and the start-state builders.
* :mod:`.drive` — what drivers share: alignment options, device, user masks (always checked),
  fingerprints, the run summary, "run N iterations", the finished-run rule.
* :mod:`.focused_run` — the focused plan and :func:`~.focused_run.refine_focused` (one focused run).
* Drivers (independent of each other, an import-linter contract): :mod:`.global_refine`
  (``gmmcore refine``), :mod:`.focused` (``refine-focused``), :mod:`.patches` (``refine-patches``)
  and :mod:`gmmcore.heter.conf2pose`'s focused stage.

Import the submodules directly; this package imports nothing on its own (the plugin reads run
summaries through :mod:`gmmcore.summary` without loading any array backend).
"""
