"""DNN heterogeneity analysis on GMMs, per half set, and conformation-to-pose conversion.

After Chen & Ludtke, Nat Methods 18:930 (2021) and Chen, Toader & Lederman, J Mol Biol (2023), as
used by Chen, Schmid & Chiu (2024) — our own parameterisation, written from the papers:

* :mod:`.nets` — dense layers as plain ``tf.Module``/``tf.Variable`` (no Keras), weights drawn
  with NumPy from a seed, saved as ``.npz`` + a JSON architecture (:func:`.nets.save_network`).
* :mod:`.decoder` — latent z → GMM centres.  Hierarchical: K anchor displacements (K-means of the
  moving Gaussians) interpolated to every Gaussian, plus per-Gaussian residual displacements
  (trained in the second round).  The decoder subtracts its own output at z = 0, so **latent 0 is
  the neutral GMM exactly**, before, during and after training.
* :mod:`.encoder` — particle → latent: a dense network on the gradient of the particle's
  ring-weighted FRC with respect to the centres of the moving Gaussians of the neutral GMM, at the
  particle's pose (the reference lineage's input).
* :mod:`.training` — per half set: loss = 1 − ring-weighted FRC of the decoded GMM's projection
  at the particle's pose against the phase-flipped particle (the backend's projector and FRC on the
  cropped grid) (+ optional latent penalty and noise); Adam; particles streamed in chunks; checkpoint per
  epoch; a resumed run is bit-identical to an uninterrupted one.
* :mod:`.latent` — PCA of a half's latents, bins along PC1, latents.csv.
* :mod:`.analysis` — the ``gmmcore heterogeneity`` driver (run directory, outputs, summary).
* :mod:`.conf2pose` — ``gmmcore conf2pose``: per particle, the pose at which the masked neutral
  GMM best matches the masked conformation GMM at the particle's pose (the backend's pose
  optimiser with :class:`gmmcore.backend.ProjectionRMSDObjective`), reconstruction, then focused
  refinement with the same mask.

Gold standard: everything is built per half with :meth:`gmmcore.particles.HalfPair.build`; a half's
networks see only its particles and its neutral GMM.

This package imports TensorFlow directly (the one named exception to "only gmmcore.backend imports
TensorFlow"); it uses the backend's projector and FRC (:func:`gmmcore.backend.tf.project_ft`,
:func:`gmmcore.backend.tf.frc`) — there is no second projector.
"""
