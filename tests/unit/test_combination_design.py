"""The covering design of tests/e2e/test_combinations.py (tests.helpers.combinations) covers what it
promises: every pair of option values trained together, or refused where nothing holding it trains."""

import itertools

from tests.helpers.combinations import (DESIGN, FACTORS, MUST, REFUSALS, covering_design, pairs,
                                        refused_options)


def test_the_design_covers_every_pair():
    """Each pair of option values is in a run expected to train, unless no combination holding
    it can train; then it is in a run expected to be refused. Each refusal rule has a run."""
    combinations = [dict(zip(FACTORS, values)) for values in itertools.product(*FACTORS.values())]
    every = set().union(*map(pairs, combinations))
    impossible = every - set().union(*(pairs(c) for c in combinations if not refused_options(c)))
    trained = set().union(*(pairs(run) for run in DESIGN if not refused_options(run)))
    refused = [run for run in DESIGN if refused_options(run)]
    assert every - trained == impossible
    assert impossible <= set().union(*map(pairs, refused))
    assert sorted(o for run in refused for o in refused_options(run)) == sorted(o for _, o in REFUSALS)
    assert len(DESIGN) == len({tuple(run.values()) for run in DESIGN}) <= 24
    assert all(any(run.items() >= must.items() for run in DESIGN) for must in MUST)
    # three two-valued factors: the 4 runs of the optimum
    assert len(covering_design({f: {"a": [], "b": []} for f in "xyz"}, lambda run: [])) == 4
