"""Recorder offsets: recorders differ in frequency response, which shifts the log-mel spectrum.

Each recorder (or recorder model) gets an offset: its mean log-mel spectrum
minus the survey's (the mean over recorders, so a recorder with more files
does not weigh more). Removing the offset before encoding is a linear
transformation of the input (``ecovae encode --correct-hardware COLUMN``).
Whether it helps is measured by :func:`ecovae.hardware.hardware_check`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ecovae.logmel_cache import cache_survey
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import Survey, as_survey


class RecorderOffsets(TransformerMixin, BaseEstimator):
    """Remove each recorder's offset from mean log-mel spectra; a scikit-learn transformer.

    Parameters
    ----------
    recorder : str or int, default "recorder"
        The column of ``X`` naming each row's recorder: a column name when ``X``
        is a DataFrame, a column index when it is an array. The other columns
        are the spectrum (one per mel band).

    ``fit(X)`` learns one offset per recorder; ``transform(X)`` returns the
    spectra (n, mels) less their recorder's offset. A recorder never seen in
    fitting gets no correction. Works inside a ``Pipeline``.

    >>> import numpy as np
    >>> X = spectra_table(np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]]), ["A", "A", "B"])
    >>> RecorderOffsets().fit(X).transform(X)  # each recorder moved to the survey's mean of recorders
    array([[2., 3.],
           [2., 3.],
           [2., 3.]])
    """

    def __init__(self, recorder: str | int = "recorder"):
        self.recorder = recorder

    def _split(self, X, fitting: bool) -> tuple[np.ndarray, np.ndarray]:
        """(spectra (n, mels) as floats, recorders (n,) as strings); checks X as scikit-learn does."""
        if isinstance(self.recorder, str) and not isinstance(X, pd.DataFrame):
            raise ValueError(
                f"an array has no column {self.recorder!r}: pass a DataFrame, or the recorder's column index"
            )
        if isinstance(X, pd.DataFrame) and isinstance(self.recorder, str) and self.recorder not in X.columns:
            raise ValueError(f"no recorder column {self.recorder!r}; the table has {list(X.columns)}")
        X = validate_data(self, X, dtype=None, reset=fitting)
        if X.shape[1] < 2:
            raise ValueError(f"RecorderOffsets needs a recorder column and a spectrum; got n_features = {X.shape[1]}")
        col = list(self.feature_names_in_).index(self.recorder) if isinstance(self.recorder, str) else self.recorder
        spectra = check_array(np.delete(X, col, axis=1), dtype=np.float64)
        return spectra, X[:, col].astype(str)

    def fit(self, X, y=None) -> RecorderOffsets:
        spectra, recorders = self._split(X, fitting=True)
        means = {str(r): spectra[recorders == r].mean(0) for r in sorted(set(recorders))}  # str: np.str_ prints oddly
        survey = np.mean(list(means.values()), axis=0)
        self.offsets_ = {r: (m - survey).astype(np.float32) for r, m in means.items()}
        return self

    def offset(self, recorder: str) -> np.ndarray:
        """The offset (mels,) of one recorder; zeros for a recorder never seen in fitting."""
        check_is_fitted(self)
        return self.offsets_.get(str(recorder), np.zeros_like(next(iter(self.offsets_.values()))))

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self)
        spectra, recorders = self._split(X, fitting=False)
        return spectra - np.stack([self.offset(r) for r in recorders])

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The spectrum's columns: the input's, less the recorder's."""
        check_is_fitted(self)
        if input_features is not None:
            names = np.asarray(input_features, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            names = self.feature_names_in_
        else:
            names = np.asarray([f"x{i}" for i in range(self.n_features_in_)], dtype=object)
        col = list(names).index(self.recorder) if isinstance(self.recorder, str) else self.recorder
        return np.delete(np.asarray(names, dtype=object), col)


def spectra_table(spectra: np.ndarray, recorders, recorder: str = "recorder") -> pd.DataFrame:
    """Mean spectra (n, mels) and their recorders as the table :class:`RecorderOffsets` takes."""
    table = pd.DataFrame(np.asarray(spectra), columns=[f"mel_{i:03d}" for i in range(np.asarray(spectra).shape[1])])
    table.insert(0, recorder, np.asarray(recorders).astype(str))
    return table


def fit_survey_offsets(
    recordings: Survey | Path | str,
    column: str,
    *,
    labels_csv: Path | None = None,
    spec: SpectrogramConfig | None = None,
    cache: Path | None = None,
) -> RecorderOffsets:
    """Recorder offsets from every readable recording of a survey (for ``ecovae encode --correct-hardware``).

    Each recording's mean spectrum comes from the log-mel cache's stored sums (computed
    once; after training on the same recordings, nothing is decoded again).
    """
    survey = as_survey(recordings, labels_csv, spec)
    if column not in survey.label_columns:
        raise ValueError(f"no label column {column!r} to correct by; the labels have {survey.label_columns}")
    spectra, recorders = [], []
    for rec in cache_survey(survey, cache):
        if rec.labels.get(column):
            hops, total, _ = rec.statistics()
            spectra.append(total / hops)
            recorders.append(rec.labels[column])
    if not spectra:
        raise ValueError(f"no readable recording has a {column!r} label")
    return RecorderOffsets(column).fit(spectra_table(np.stack(spectra), recorders, column))
