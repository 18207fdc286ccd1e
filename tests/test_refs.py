"""Which image a REF names (refs): as written, normalized, or as a short name (R2, X1)."""

from __future__ import annotations

import pytest

from ocifs.refs import Reference, match


@pytest.mark.parametrize(
    "name, normalized",
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("org/app:v1", "docker.io/org/app:v1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:v1", "localhost:5000/app:v1"),
        ("quay.io/org/app:v1", "quay.io/org/app:v1"),
        ("Registry/app:v1", "Registry/app:v1"),  # capitals: a registry, as Docker reads it
        ("app:v1@sha256:" + "a" * 64, "docker.io/library/app:v1"),
    ],
)
def test_r2_normalization(name: str, normalized: str) -> None:
    reference = Reference.parse(name)
    assert reference is not None and reference.normalized() == normalized


@pytest.mark.parametrize("name", ["", ":v1", "app:", "a//b", "/app"])
def test_r2_not_a_name(name: str) -> None:
    assert Reference.parse(name) is None


IMAGES = [
    (["localhost/app:v1"], "podman"),
    (["docker.io/library/busybox:latest"], "skopeo"),
    (["alpine:3.19"], "docker"),
    (["v2"], "ref name"),
]


@pytest.mark.parametrize(
    "ref, found",
    [
        ("localhost/app:v1", ["podman"]),  # as written
        ("busybox", ["skopeo"]),  # normalized
        ("busybox:latest", ["skopeo"]),
        ("docker.io/library/alpine:3.19", ["docker"]),
        ("docker.io/alpine:3.19", ["docker"]),
        ("app:v1", ["podman"]),  # a short name, as podman looks up local images
        ("v2", ["ref name"]),
        ("app", []),  # the tag defaults to latest
        ("other.io/app:v1", []),  # a registry given is a registry meant
        ("alpine", []),
    ],
)
def test_r2_match_tiers(ref: str, found: list[str]) -> None:
    assert match(ref, IMAGES) == found


def test_r2_exact_name_wins_over_a_normalized_one() -> None:
    """A name written exactly as the REF is that image, though another normalizes the same."""
    images = [(["docker.io/library/app:v1"], "full"), (["app:v1"], "short")]
    assert match("app:v1", images) == ["short"]
    assert match("docker.io/library/app:v1", images) == ["full"]


def test_r2_a_short_name_may_name_several() -> None:
    """The caller reports several images of one tier as ambiguous."""
    images = [(["localhost/app:v1"], "a"), (["quay.io/org/app:v1"], "b")]
    assert match("app:v1", images) == ["a", "b"]
