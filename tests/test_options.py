"""The one option vocabulary of the refinement-like verbs (``gmmcore.options``): every verb rejects
the same bad value of a shared flag the same way — exit code 2, one line naming the flag, the same
words — before anything is read or written.

The inputs named on the command lines do not exist: a bad option is refused before the inputs are
looked at, so no dataset is needed and the module runs in a few seconds.
"""
from __future__ import annotations

import pytest

from gmmcore import cli
from tests import helpers

VERBS = ("refine", "refine-focused", "refine-patches", "heterogeneity", "conf2pose")

# (flag named in the error, the bad arguments)
BAD = [
    ("--lr-angle", ["--lr-angle", "0"]),
    ("--lr-angle", ["--lr-angle", "nan"]),
    ("--lr-shift", ["--lr-shift", "-0.5"]),
    ("--maxres", ["--maxres", "30", "--minres", "25"]),  # the band upside down
    ("--maxres", ["--maxres", "25", "--minres", "25"]),
    ("--maxres", ["--maxres", "nan"]),
    ("--maxres", ["--maxres", "-4"]),
    ("--minres", ["--minres", "inf"]),
    ("--threads", ["--threads", "0"]),
    ("--batch", ["--batch", "-3"]),
    ("--batch", ["--batch", "many"]),
    ("--chunk", ["--chunk", "0"]),
    ("--steps", ["--steps", "0"]),
    ("--gpu", ["--gpu", "abc"]),
    ("--gpu", ["--gpu", "0,-1"]),
    ("--seed", ["--seed", "-1"]),
    ("--prior-angle", ["--prior-angle", "0"]),
    ("--prior-shift", ["--prior-shift", "nan"]),
    ("--iter", ["--iter", "-1"]),
    ("--sym", ["--sym", "X7"]),
    ("--reimpose", ["--reimpose", "Q2"]),
    ("--mask-level", ["--mask-level", "0"]),
    ("--mask-level", ["--mask-level", "1.5"]),
    ("--mask-level", ["--mask-level", "nan"]),
    ("--gmm-n-scale", ["--gmm-n-scale", "0"]),
    ("--gmm-n-scale", ["--gmm-n-scale", "20"]),
]


def _options(verb: str) -> set:
    parser = cli.build_parser([verb])
    return cli._verb_options(parser, verb)  # noqa: SLF001 - the options a verb accepts


OPTIONS = {verb: _options(verb) for verb in VERBS}


def _command(verb, tmp_path):
    """A command line of ``verb`` whose inputs do not exist and whose --out is ``tmp_path/out``."""
    missing = tmp_path / "missing"
    inputs = {"refine": ["--particles", missing / "p.star"],
              "refine-focused": ["--from", missing, "--mask", missing / "m.mrc"],
              "refine-patches": ["--from", missing],
              "heterogeneity": ["--from", missing],
              "conf2pose": ["--from", missing, "--mask", missing / "m.mrc"]}[verb]
    return inputs + ["--out", tmp_path / "out", "--cpu"]


CASES = [pytest.param(verb, flag, bad, id=f"{verb}:{' '.join(bad)}")
         for verb in VERBS for flag, bad in BAD if all(a in OPTIONS[verb] for a in bad if a.startswith("--"))]


def _refused(capsys, tmp_path, verb, flag, bad) -> str:
    rc, err, _ = helpers.run_verb(capsys, verb, *_command(verb, tmp_path), *bad)
    line = helpers.assert_one_error(rc, err, flag, verb=verb)
    assert not (tmp_path / "out").exists()  # nothing written
    return line.split(": error: ", 1)[1]


@pytest.mark.parametrize("verb, flag, bad", CASES)
def test_bad_value_refused_before_anything_is_written(capsys, tmp_path, verb, flag, bad):
    _refused(capsys, tmp_path, verb, flag, bad)


@pytest.mark.parametrize("flag, bad", BAD, ids=[" ".join(b) for _, b in BAD])
def test_every_verb_says_the_same(capsys, tmp_path, flag, bad):
    """One rule per flag: the same bad value gives the same words in every verb that has the flag."""
    said = {verb: _refused(capsys, tmp_path / verb, verb, flag, bad)
            for verb in VERBS if all(a in OPTIONS[verb] for a in bad if a.startswith("--"))}
    assert len(said) >= 2, said
    assert len(set(said.values())) == 1, said


def test_shared_flags_declared_by_every_verb():
    shared = {"--gpu", "--cpu", "--backend", "--threads", "--batch", "--chunk", "--seed", "--continue",
              "--maxres", "--minres"}
    for verb in VERBS:
        assert shared <= OPTIONS[verb], (verb, shared - OPTIONS[verb])


@pytest.mark.parametrize("verb, bad, flag", [("heterogeneity", ["--backend", "jax"], "--backend"),
                                             ("conf2pose", ["--backend", "jax"], "--backend"),
                                             # the training batch is a hyperparameter: no device sizing
                                             ("heterogeneity", ["--batch", "auto"], "--batch")])
def test_tensorflow_verbs_refuse_jax_and_batch_auto(capsys, tmp_path, verb, bad, flag):
    _refused(capsys, tmp_path, verb, flag, bad)


@pytest.mark.parametrize("verb, new", [("heterogeneity", "--maxres"), ("conf2pose", "--convert-maxres")])
def test_res_is_a_deprecated_alias(capsys, tmp_path, verb, new):
    """--res still works (one note line naming the new flag); its value is checked as the new flag's."""
    from gmmcore.cli import build_parser

    args = build_parser([verb]).parse_args([verb] + [str(a) for a in _command(verb, tmp_path)] + ["--res", "6"])
    assert getattr(args, new[2:].replace("-", "_")) == 6.0
    note = capsys.readouterr().err.strip()
    assert note.count("\n") == 0 and "--res is deprecated" in note and new in note
    rc, err, _ = helpers.run_verb(capsys, verb, *_command(verb, tmp_path), "--res", "nan")
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 2 and "deprecated" in lines[0], err
    helpers.assert_one_error(rc, lines[1], new, verb=verb)
    assert not (tmp_path / "out").exists()


def test_defaults_written_once(tmp_path):
    """The shared defaults come from gmmcore.defaults in every verb (minres: heterogeneity's own)."""
    from gmmcore import defaults

    for verb in VERBS:
        args = cli.build_parser([verb]).parse_args([verb] + [str(a) for a in _command(verb, tmp_path)])
        assert args.chunk == defaults.CHUNK and int(args.batch) == defaults.BATCH and args.seed == defaults.SEED
        assert args.backend == defaults.BACKEND and args.threads is None and args.maxres is None
        assert args.minres == (defaults.HETEROGENEITY_MINRES_A if verb == "heterogeneity" else defaults.MINRES_A)


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_help_of_every_verb(capsys, verb):
    """``gmmcore <verb> --help`` prints the verb's options (a stray % in a help text once broke it)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([verb, "--help"])
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out
