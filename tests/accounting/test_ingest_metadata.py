"""Ingestion's reading of kube-state-metrics answers, without a Prometheus."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from accounting.ingest import PART_LABEL, _labels_by, split_pod_metadata
from accounting.prometheus import Sample

samples = st.lists(
    st.builds(
        lambda namespace, pod, team, extra: Sample(
            {
                "namespace": namespace,
                "pod": pod,
                **({"label_team": team} if team else {}),
                **({"label_cost_center": extra} if extra else {}),
                "uid": f"{namespace}/{pod}/{team}/{extra}",
            },
            [(0.0, 1.0)],
        ),
        st.sampled_from(["a", "b"]),
        st.sampled_from(["p1", "p2", "p3"]),
        st.sampled_from(["", "x", "y"]),
        st.sampled_from(["", "c1"]),
    ),
    max_size=12,
)


@given(samples=samples, data=st.data())
def test_pod_labels_merge_as_in_label_order_whatever_order_they_come_in(samples, data):
    # The pods' labels skip the sort of every sample (only a key's several samples are
    # sorted): each key's labels must be what the fully sorted merge gives.
    shuffled = data.draw(st.permutations(samples))
    by_label_order = _labels_by(samples, ("namespace", "pod"))
    assert _labels_by(shuffled, ("namespace", "pod"), keys_in_label_order=False) == by_label_order


def test_the_combined_pod_answer_splits_into_its_parts_without_the_tag():
    tagged = [
        Sample({"pod": "a", PART_LABEL: "pod_owner", "owner_kind": "Job"}, [(1.0, 1.0)]),
        Sample({"pod": "a", PART_LABEL: "pod_requests"}, [(1.0, 2.0)]),
        Sample({"pod": "b", PART_LABEL: "unknown"}, [(1.0, 1.0)]),
    ]
    parts = split_pod_metadata(tagged)
    assert [s.labels for s in parts["pod_owner"]] == [{"pod": "a", "owner_kind": "Job"}]
    assert [s.points for s in parts["pod_requests"]] == [[(1.0, 2.0)]]
    assert parts["pod_labels"] == []
