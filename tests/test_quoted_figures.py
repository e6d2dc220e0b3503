"""Every accuracy figure the README and the docs quote comes from a results file in the
repository: each quote below must stand, word for word, both where it is quoted and in its
source (a table row written by a benchmark script, or the demo's reference file). Change a
result and its quotes fail here until they are updated; add a quote, add a row here."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCURACY = "benchmarks/results/accuracy.md"
STUDY = "benchmarks/results/study.md"
SAVINGS = "benchmarks/results/feedback_savings.md"
BAD_PAIRS = "benchmarks/results/bad_pairs.md"
IMBALANCE = "benchmarks/results/imbalance_check.md"
MULTILABEL = "benchmarks/results/multilabel_glyphs.md"
CHECK_SUMMARY = (
    r"Agreement with the validation outcome: \*\*7 of 8\*\* cells \(5 of 5 glyphs cells [^\n]*, 2 of 3 held-out"
)

# (document, text as quoted there, source file, the source row (a regex) holding the same figures)
QUOTES = [
    ("README.md", "MIDAS beats joint training (+2.9 points [+0.8, +4.9])", ACCURACY,
     r"\| midas \| 5 \| 89\.3 ± 1\.5 \| \*\*\+2\.9 \[\+0\.8, \+4\.9\]\*\*"),
    ("README.md", "(+0.9 [-0.4, +2.1], a tie)", ACCURACY,
     r"\| midas \| 5 \| 89\.3 ± 1\.5 \|[^\n]*\| \+0\.9 \[-0\.4, \+2\.1\] \|"),
    ("README.md", "78 % it beats joint training with heads by +2.0 [+1.3, +2.7]", STUDY,
     r"image_noise=0\.3 \| midas \|[^\n]*\| \+2\.0 \[\+1\.3, \+2\.7\] \|[^\n]*\| 77\.8 \|"),
    ("README.md", "(-2.6 and -7.1 points)", STUDY,
     r"image_noise=0\.7 \| midas \|[^\n]*\| -2\.6 \[-4\.9, -0\.3\] \|[^\n]*\n[^\n]*image_noise=1\.2 \| midas \|"
     r"[^\n]*\| -7\.1 \[-9\.5, -4\.8\] \|"),
    ("README.md", "0.75 of the wall time for -0.10 test points [-1.04, +0.84]", SAVINGS,
     r"\| joint \+ prune vs joint \| 0\.695 \| 0\.753 \|[^\n]*\| -0\.10 \[-1\.04, \+0\.84\] \(tie\)"),
    ("README.md", "0.81 of the time for -0.61 points [-3.48, +2.26]", SAVINGS,
     r"\| MIDAS \+ prune vs MIDAS \| 0\.754 \| 0\.813 \|[^\n]*\| -0\.61 \[-3\.48, \+2\.26\] \(tie\)"),
    ("README.md", "training held 89.8 % of them (5 seeds; the last values alone: 75.2 %; the per-sample loss "
     "alone: 42.1 %; random: 5 %)", BAD_PAIRS,
     r"\*\*`mean_surprise_late`\*\* \(chosen\) \|[^\n]*\| \*\*0\.898\*\* \|\n[^\n]*\n"
     r"\| `surprise`, last value [^\n]*\| 0\.752 \|\n[^\n]*\n\| per-sample loss [^\n]*\| 0\.421 \|"),
    ("README.md", "test accuracy (-0.84 points [-2.31, +0.63])", BAD_PAIRS,
     r"mean -0\.84 \[-2\.31, \+0\.63\] \(a tie\)"),
    ("docs/feedback.md", "0.898 (0.905, 0.905, 0.890, 0.910, 0.880)", BAD_PAIRS,
     r"0\.905 / 0\.905 / 0\.890 / 0\.910 / 0\.880 \| \*\*0\.898\*\*"),
    ("README.md", "agreed with MIDAS's measured validation outcome on 7 of 8 cells", IMBALANCE, CHECK_SUMMARY),
    ("README.md", "2 of the 3 held out from the choice of its thresholds", IMBALANCE, CHECK_SUMMARY),
    ("docs/imbalance_check.md", "on 7 of 8 cells: the study's five, where agreement is in-sample, and 2 of the 3 "
     "held-out 8x8 datasets", IMBALANCE, CHECK_SUMMARY),
    ("docs/imbalance_check.md", "a constant `no_need` would already agree on 4", IMBALANCE,
     r"A constant `no_need` would agree with 4 of 8 validation outcomes"),
    ("docs/imbalance_check.md", "MIDAS won where the check put the image's lift at 0.61", IMBALANCE,
     r"image_noise=0\.3 \|[^\n]*\| 0\.61 \| helps \| \+2\.7 \[\+1\.4, \+4\.0\] win \|"),
    ("docs/imbalance_check.md", "tied at 0.32 (twice)", IMBALANCE,
     r"image_noise=0\.5 \(default\) \|[^\n]*\| 0\.32 \| no_need \| [^|]* tie \|[^\n]*\n"
     r"[^\n]*\n[^\n]*\n\| glyphs audio_snr_db=0 \|[^\n]*\| 0\.32 \| no_need \| [^|]* tie \|"),
    ("docs/imbalance_check.md", "lost at 0.16 and 0.03", IMBALANCE,
     r"image_noise=0\.7 \|[^\n]*\| 0\.16 \| hurts \| [^|]* loss \|[^\n]*\n"
     r"[^\n]*image_noise=1\.2 \|[^\n]*\| 0\.03 \| hurts \| [^|]* loss \|"),
    ("docs/imbalance_check.md", "(8.5 points or more, the interval above 0)", IMBALANCE,
     r"image_noise=0\.7 \| chose thresholds \| image \| 25\.5 \| 17\.0 \| \+8\.5 \[\+2\.2, \+14\.7\]"),
    ("README.md", "+0.9 micro-F1 [-1.3, +3.0] against joint training (a tie) and -1.4 [-2.4, -0.3] against joint "
     "training with unimodal heads", MULTILABEL,
     r"\| midas \| 5 \| 92\.1 ± 1\.2 \| 92\.0 ± 1\.2 \| \+0\.9 \[-1\.3, \+3\.0\] \| \*\*-1\.4 \[-2\.4, -0\.3\]\*\*"),
    ("docs/benchmarks.md", "| midas (`different_set`) | 92.1 ± 1.2 | 92.0 ± 1.2 | +0.9 [-1.3, +3.0] "
     "| -1.4 [-2.4, -0.3] | -1.4 [-3.3, +0.5] | 70.1 |", MULTILABEL,
     r"\| midas \| 5 \| 92\.1 ± 1\.2 \| 92\.0 ± 1\.2 \| \+0\.9 \[-1\.3, \+3\.0\] \| \*\*-1\.4 \[-2\.4, -0\.3\]\*\* "
     r"\| -1\.4 \[-3\.3, \+0\.5\] \|[^\n]*\| 70\.1 \|"),
    ("docs/benchmarks.md", "| joint_heads | 93.5 ± 0.6 | 93.4 ± 0.6 | +2.2 [+0.5, +4.0] |", MULTILABEL,
     r"\| joint_heads \| 5 \| 93\.5 ± 0\.6 \| 93\.4 ± 0\.6 \| \*\*\+2\.2 \[\+0\.5, \+4\.0\]\*\*"),
    ("docs/concepts.md", "`different_set` 90.7 and `disjoint` 90.5 validation micro-F1", MULTILABEL,
     r"`different_set` 90\.7, `disjoint` 90\.5; chosen `different_set`"),
]  # fmt: skip


@pytest.mark.parametrize("document, quoted, source, row", QUOTES, ids=[q[1][:40] for q in QUOTES])
def test_a_quoted_figure_matches_its_source(document, quoted, source, row):
    assert quoted in " ".join((ROOT / document).read_text().split()), f"{document} no longer quotes {quoted!r}"
    assert re.search(row, (ROOT / source).read_text()), f"{source} no longer holds the figures quoted in {document}"


def test_the_quickstart_shows_the_demo_reference_lines_it_prints():
    """The quickstart's example output quotes the 5-seed figures the demo prints, which the
    demo reads from the shipped benchmark reference: generate them and compare."""
    import argparse
    import json

    from midas_data.__main__ import _benchmark_reference
    from midas_data.experiments.demo.glyphs import BENCHMARK_REFERENCE

    reference = json.loads(BENCHMARK_REFERENCE.read_text())
    args = argparse.Namespace(seed=0, quick=False)
    lines = _benchmark_reference(args, reference["epochs"], reference["midas_options"])
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    for line in lines[1:]:  # the first line is prose, wrapped in the doc
        assert f"    {line}\n" in quickstart, f"docs/quickstart.md lacks the demo's line {line!r}"
