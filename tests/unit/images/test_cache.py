"""The cache directory and the not-built error."""

from __future__ import annotations

import pytest

from xvm.errors import ImageError
from xvm.images import cache_dir, default_guest


def test_cache_dir_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" / "xvm"
    assert cache_dir().is_dir()


def test_cache_dir_defaults_to_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "xvm"


def test_default_guest_without_build_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ImageError, match="xvm images build"):
        default_guest(build=False)
    with pytest.raises(ImageError, match="xvm images pull --debian"):
        default_guest(build=False, kind="debian")
