"""Plain matplotlib plots of gmmcore runs (headless: no pyplot state, Agg canvas), used by the
viewers (interactive windows), by the protocols (FSC curves as Scipion outputs) and by the demo.

* :mod:`.refine` — global refinement: FSC per iteration, resolution, GMM scatter, pose changes.
* :mod:`.focused` — focused and patch runs: comparison FSC, per-patch FSC, patches, local resolution.
* :mod:`.heterogeneity` — latent space, maps along PC1, training loss, conf2pose's region FSC.

Below both protocols and viewers: it imports neither (import-linter contract).
"""
