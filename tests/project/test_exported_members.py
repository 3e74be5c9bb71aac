"""The public surface is deliberate: what `mfm_dist` exports is exactly its `__all__`, and the
one-call API is part of it (the pattern of httpx's tests/test_exported_members.py)."""

from __future__ import annotations

import types

import mfm_dist
import mfm_dist.testing


def _public_members(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_is_sorted_and_unique() -> None:
    assert mfm_dist.__all__ == sorted(set(mfm_dist.__all__))


def test_every_public_member_is_exported_and_every_export_exists() -> None:
    exported = set(mfm_dist.__all__)
    assert _public_members(mfm_dist) - {"__version__"} == exported
    for name in exported:
        assert getattr(mfm_dist, name) is not None


def test_exports_are_our_own() -> None:
    """Nothing third-party is re-exported as if it were ours."""
    for name in mfm_dist.__all__:
        member = getattr(mfm_dist, name)
        module = getattr(member, "__module__", None)
        if module not in (None, "typing") and isinstance(member, type | types.FunctionType):
            assert module.split(".")[0] == "mfm_dist", (name, module)


def test_one_call_api_is_exported() -> None:
    from mfm_dist.api import cancel, resume, run

    assert (mfm_dist.run, mfm_dist.resume, mfm_dist.cancel) == (run, resume, cancel)


def test_no_module_shadows_the_standard_library() -> None:
    """`mfm_dist.inspect`, `run` and `replay` (twice) once confused readers; module names say
    what they hold. Three names are the domain's own and kept: the IO layer (`mfm_dist.io`),
    its HTTP transport (`io.transports.http`) and the secret rules (`mfm_dist.secrets`), always
    imported by their full name."""
    import pkgutil
    import sys

    ours = [m.name for m in pkgutil.walk_packages(mfm_dist.__path__, "mfm_dist.")]
    leaves = [m.split(".")[-1] for m in ours]
    assert not set(leaves) & sys.stdlib_module_names - {"io", "http", "secrets"}
    assert leaves.count("replay") <= 1


def test_testing_exports() -> None:
    assert mfm_dist.testing.__all__ == ["ArtifactStoreContract", "EventStoreContract"]
    assert _public_members(mfm_dist.testing) == set(mfm_dist.testing.__all__)
