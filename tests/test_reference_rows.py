"""Matching particles to the rows of a reference file by image name (vectorised) against a plain
per-particle look-up."""
import numpy as np

from gmmcore.io.stacks import match_image_names
from gmmcore.particles import image_keys


def test_match_shuffled_absolute_against_relative_and_ambiguity():
    rng = np.random.default_rng(5)
    ref_names = [f"{i + 1}@Extract/job012/mic{m}.mrcs" for m in range(7) for i in range(40)]
    perm = rng.permutation(len(ref_names))[:150]
    ours = [f"{ref_names[r].split('@')[0]}@/data/project/{ref_names[r].split('@')[1]}" for r in perm]
    rows = match_image_names(image_keys(ours), image_keys(ref_names))
    np.testing.assert_array_equal(rows, perm)
    # the same with (index0, path) pairs, the form cryoSPARC records give
    pairs = [(int(s.split("@")[0]) - 1, s.split("@")[1]) for s in ref_names]
    np.testing.assert_array_equal(match_image_names(image_keys(ours), pairs), perm)
    # an image the reference lacks, a stack it lacks, a reference naming one image twice: no match
    assert match_image_names(image_keys(ours + ["41@Extract/job012/mic0.mrcs"]), image_keys(ref_names)) is None
    assert match_image_names(image_keys(ours + ["1@other.mrcs"]), image_keys(ref_names)) is None
    assert match_image_names(image_keys(ours), image_keys(ref_names + [ref_names[3]])) is None
    # two particles naming one image: no one-to-one match
    assert match_image_names(image_keys(ours + [ours[0]]), image_keys(ref_names)) is None
