"""Prometheus text read back as samples, for the tests that check what a scrape says."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape's text, by name and label set."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def select(samples: Samples, name: str, **labels: str) -> dict[Labels, float]:
    """The samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and wanted <= lab}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples ``select`` picks."""
    return sum(select(samples, name, **labels).values())


def assert_histograms_sane(samples: Samples, *names: str) -> None:
    """Each series of each histogram ``name``: cumulative buckets ending at +Inf, whose
    count is the ``_count``, and a ``_sum`` of time spent above zero."""
    for name in names:
        series: dict[Labels, list[tuple[float, float]]] = {}
        for labels, v in select(samples, f"{name}_bucket").items():
            le = dict(labels)["le"]
            series.setdefault(labels - {("le", le)}, []).append((float(le), v))
        assert series, name
        for labels, buckets in series.items():
            buckets.sort()
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), (name, labels)  # cumulative: never decreasing
            assert buckets[-1][0] == math.inf, (name, labels)
            assert counts[-1] == samples[f"{name}_count", labels] > 0, (name, labels)
            assert samples[f"{name}_sum", labels] > 0, (name, labels)
