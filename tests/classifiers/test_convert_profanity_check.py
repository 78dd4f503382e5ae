"""The lexical baseline converter's restricted unpickler is only used on the joblib it was checked
against (issue 15, point 5c): joblib is pinned, and before unpickling anything the script proves
on crafted streams that a disallowed global is refused, also inside an object array."""

from __future__ import annotations

import pickle
import re

import pytest

from moderation.config import PROJECT_ROOT
from tests.classifiers.test_lexical_baseline import _converter


@pytest.fixture(scope="module")
def converter():
    return _converter()


def test_joblib_is_pinned_to_the_version_the_unpickler_was_checked_against(converter):
    import joblib

    pins = re.findall(r'"joblib==([^"]+)"', (PROJECT_ROOT / "pyproject.toml").read_text())
    assert pins == [converter.JOBLIB_VERSION] == [joblib.__version__]
    converter.check_unpickler()  # the installed joblib passes


def test_a_joblib_whose_object_arrays_bypass_find_class_is_refused_before_any_file_is_read(converter, tmp_path,
                                                                                             monkeypatch):
    """joblib before GHSA-m62q-453p-gv66 read an object array's nested stream with a bare
    pickle.load: the check catches that and nothing is unpickled."""
    from joblib import numpy_pickle

    original = numpy_pickle.NumpyArrayWrapper.read_array

    def old_read_array(self, unpickler, ensure_native_byte_order):
        if self.dtype.hasobject:
            return pickle.load(unpickler.file_handle)
        return original(self, unpickler, ensure_native_byte_order)

    monkeypatch.setattr(numpy_pickle.NumpyArrayWrapper, "read_array", old_read_array)
    with pytest.raises(converter.SourceError, match="let a global inside an object array through"):
        converter.check_unpickler()
    with pytest.raises(converter.SourceError, match="object array"):
        converter.load_source(tmp_path)  # refused before looking for the (missing) files


def test_another_joblib_version_is_refused(converter, monkeypatch):
    import joblib

    monkeypatch.setattr(joblib, "__version__", "1.4.2")
    with pytest.raises(converter.SourceError, match=r"joblib 1\.4\.2 is installed; .* joblib==1\.6\.0"):
        converter.check_unpickler()
