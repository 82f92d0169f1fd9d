"""Where and when: the observation's date, time and place as features, and a spatio-temporal prior
p(class | date, place) combined with any head's probabilities.

Functions of arrays. :func:`encode` turns the store's ``observed_at`` (datetimes) and ``location``
(GeoLocation points ``[lon, lat]``) into a fixed matrix of :data:`COLUMNS`: day of the year on the
circle, hour on the circle (only where the time is not a date-only midnight), latitude/longitude on
the unit sphere, and one ``*_missing`` indicator per group, so a sample without metadata still gets
a row (zeros and its indicator set).

:class:`KdePrior` is the prior for small collections: per class, a kernel density of the date on
the circle (von Mises kernel) and of the place on the sphere (von Mises-Fisher kernel), their
concentrations chosen by leave-one-out likelihood; ``p(class | m) ∝ n_c · f_c(m)``, mixed with the
class frequencies (a floor, ``floor``). :func:`combine` fuses it with a head as iNaturalist does:
``log p = log p_head + w · log max(prior, eps)``, renormalised; :func:`choose_weight` picks ``w``
on out-of-fold probabilities (``w = 0``: the head alone, exactly).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import i0e, logsumexp

log = logging.getLogger(__name__)

#: the encoded matrix's columns, always in this order (a group's values are 0 where it is missing)
COLUMNS = ("day_sin", "day_cos", "day_missing", "hour_sin", "hour_cos", "hour_missing",
           "geo_x", "geo_y", "geo_z", "geo_missing")
#: metadata group -> its missing indicator column
GROUPS = {"day": "day_missing", "hour": "hour_missing", "place": "geo_missing"}
MODES = ("auto", "none")
EPS = 0.005  # iNaturalist's floor on the prior: vision × max(prior, 0.005)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
DAY_KAPPAS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)  # von Mises: 1/sqrt(κ) ≈ 0.45 rad ≈ 26 days at κ=5
PLACE_KAPPAS = (10.0, 100.0, 1e3, 1e4, 1e5)  # vMF: 1/sqrt(κ) rad; κ=1e4 ≈ 64 km on the Earth


# ---- encoding ----------------------------------------------------------------------------------------
def _day_angle(t) -> float:
    start = t.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    days = 366 if (t.year % 4 == 0 and (t.year % 100 != 0 or t.year % 400 == 0)) else 365
    return 2 * np.pi * (t - start).total_seconds() / (days * 86400.0)


def _has_time(t) -> bool:
    return (t.hour, t.minute, t.second, t.microsecond) != (0, 0, 0, 0)


def encode(observed_at: Sequence, location: Sequence) -> np.ndarray:
    """The (n, len(COLUMNS)) metadata matrix of n samples.

    Args:
        observed_at: n datetimes or None (the store's ``observed_at``).
        location: n ``[lon, lat]`` points in degrees or None (a GeoLocation's ``point``).
    Day of the year: angle 2π·(seconds since Jan 1)/(length of that year), as (sin, cos): Jan 1 and
    Jul 2 sit nearly opposite. Hour: 2π·(seconds since midnight)/86400, only where the time is not
    00:00:00 (a date without a time). Place: (cos lat cos lon, cos lat sin lon, sin lat).
    """
    if len(observed_at) != len(location):
        raise ValueError(f"observed_at has {len(observed_at)} values, location {len(location)}: expected the same")
    M = np.zeros((len(observed_at), len(COLUMNS)))
    col = {c: i for i, c in enumerate(COLUMNS)}
    for i, (t, point) in enumerate(zip(observed_at, location)):
        if t is None:
            M[i, col["day_missing"]] = M[i, col["hour_missing"]] = 1
        else:
            a = _day_angle(t)
            M[i, col["day_sin"]], M[i, col["day_cos"]] = np.sin(a), np.cos(a)
            if _has_time(t):
                h = 2 * np.pi * (t.hour * 3600 + t.minute * 60 + t.second) / 86400.0
                M[i, col["hour_sin"]], M[i, col["hour_cos"]] = np.sin(h), np.cos(h)
            else:
                M[i, col["hour_missing"]] = 1
        if point is None or len(point) != 2 or any(v is None for v in point):
            M[i, col["geo_missing"]] = 1
        else:
            lon, lat = np.radians(point[0]), np.radians(point[1])
            M[i, [col["geo_x"], col["geo_y"], col["geo_z"]]] = (np.cos(lat) * np.cos(lon),
                                                                np.cos(lat) * np.sin(lon), np.sin(lat))
    return M


def groups_present(M: np.ndarray) -> list[str]:
    """The metadata groups (of :data:`GROUPS`) that at least one row of ``M`` has."""
    return [g for g, c in GROUPS.items() if (M[:, COLUMNS.index(c)] == 0).any()]


def location_point(value) -> list | None:
    """A stored ``location`` value (a GeoLocation, a dict with ``point``, or a point) as ``[lon, lat]``."""
    if value is None:
        return None
    point = getattr(value, "point", None)
    if point is None and isinstance(value, dict):
        point = value.get("point")
    if point is None and isinstance(value, (list, tuple)):
        point = value
    return list(point) if point is not None else None


# ---- the prior ---------------------------------------------------------------------------------------
def _log_vm(cosd: np.ndarray, kappa: float) -> np.ndarray:
    """log von Mises density on the circle given cos(θ - θ_i)."""
    return kappa * cosd - np.log(2 * np.pi) - (np.log(i0e(kappa)) + kappa)


def _log_vmf(dot: np.ndarray, kappa: float) -> np.ndarray:
    """log von Mises-Fisher density on the 2-sphere given u·u_i."""
    log_sinh = kappa + np.log1p(-np.exp(-2 * kappa)) - np.log(2)
    return kappa * dot + np.log(kappa) - np.log(4 * np.pi) - log_sinh


@dataclass
class KdePrior:
    """p(class | date, place) by per-class kernel density; the scikit-learn contract on encoded
    rows (:func:`encode`). A missing group contributes the uniform density (date 1/2π, place 1/4π),
    so it neither helps nor hurts; a group no training row has is left out.

    ``floor``: the posterior is mixed with the class frequencies, ``(1 - floor)·kde + floor·freq``.
    ``day_kappa`` / ``place_kappa``: None chooses from :data:`DAY_KAPPAS` / :data:`PLACE_KAPPAS`
    by leave-one-out log-likelihood of the training labels.
    """

    floor: float = 0.1
    day_kappa: float | None = None
    place_kappa: float | None = None
    classes_: np.ndarray = field(default=None, repr=False)
    day_kappa_: float | None = field(default=None, repr=False)
    place_kappa_: float | None = field(default=None, repr=False)

    def fit(self, M: np.ndarray, y: np.ndarray) -> "KdePrior":
        M, y = np.asarray(M, dtype=float), np.asarray(y, dtype=int)
        self.classes_, yi = np.unique(y, return_inverse=True)
        self.M_, self.yi_ = M, yi
        self.freq_ = np.bincount(yi, minlength=len(self.classes_)) / len(yi)
        day_ok, geo_ok = self._ok(M)
        self.day_kappa_ = self.place_kappa_ = None
        day_grid = [self.day_kappa] if self.day_kappa is not None else DAY_KAPPAS
        place_grid = [self.place_kappa] if self.place_kappa is not None else PLACE_KAPPAS
        day_grid = day_grid if day_ok.any() else [None]
        place_grid = place_grid if geo_ok.any() else [None]
        best = None
        for kd in day_grid:
            for kp in place_grid:
                logp = self._log_posterior(M, kd, kp, leave_one_out=True)
                score = float(logp[np.arange(len(yi)), yi].mean())
                if best is None or score > best[0]:
                    best = (score, kd, kp)
        _, self.day_kappa_, self.place_kappa_ = best
        log.info("metadata prior: day κ %s, place κ %s (leave-one-out log-likelihood %.3f)",
                 self.day_kappa_, self.place_kappa_, best[0])
        return self

    @staticmethod
    def _ok(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return M[:, COLUMNS.index("day_missing")] == 0, M[:, COLUMNS.index("geo_missing")] == 0

    def _log_kernel(self, Q: np.ndarray, kd: float | None, kp: float | None) -> np.ndarray:
        """(len(Q), n_train) log kernel of each query row at each training row."""
        K = np.zeros((len(Q), len(self.M_)))
        qd, td = self._ok(Q)[0], self._ok(self.M_)[0]
        if kd is not None:
            s, c = COLUMNS.index("day_sin"), COLUMNS.index("day_cos")
            cosd = Q[:, [s, c]] @ self.M_[:, [s, c]].T
            K += np.where(qd[:, None] & td[None, :], _log_vm(cosd, kd), -np.log(2 * np.pi))
        if kp is not None:
            qg, tg = self._ok(Q)[1], self._ok(self.M_)[1]
            xyz = [COLUMNS.index(c) for c in ("geo_x", "geo_y", "geo_z")]
            K += np.where(qg[:, None] & tg[None, :], _log_vmf(Q[:, xyz] @ self.M_[:, xyz].T, kp), -np.log(4 * np.pi))
        return K

    def _log_posterior(self, Q: np.ndarray, kd, kp, *, leave_one_out: bool = False) -> np.ndarray:
        K = self._log_kernel(Q, kd, kp)
        if leave_one_out:
            np.fill_diagonal(K, -np.inf)
        n_c = len(self.classes_)
        # log Σ_{i in c} K(q, i): the class's mass n_c·f_c(q), so p(c | q) ∝ it (Bayes with the class frequency)
        mass = np.full((len(Q), n_c), -np.inf)
        for c in range(n_c):
            cols = self.yi_ == c
            if cols.any():
                mass[:, c] = logsumexp(K[:, cols], axis=1)
        post = np.exp(mass - logsumexp(mass, axis=1, keepdims=True))
        post = np.nan_to_num(post, nan=0.0)
        return np.log((1 - self.floor) * post + self.floor * self.freq_[None, :])

    def predict_proba(self, M: np.ndarray) -> np.ndarray:
        """(n, len(classes_)) p(class | metadata)."""
        return np.exp(self._log_posterior(np.asarray(M, dtype=float), self.day_kappa_, self.place_kappa_))

    def loo_proba(self) -> np.ndarray:
        """(n_train, len(classes_)) p(class | metadata) of each training row by the others (leave one
        out): a row's own label never supports itself."""
        return np.exp(self._log_posterior(self.M_, self.day_kappa_, self.place_kappa_, leave_one_out=True))


def aligned_prior(prior: KdePrior, M: np.ndarray, n_classes: int) -> np.ndarray:
    """``prior.predict_proba(M)`` over all ``n_classes`` (a class the prior never saw: 0)."""
    out = np.zeros((len(M), n_classes))
    out[:, prior.classes_] = prior.predict_proba(M)
    return out


# ---- head × prior --------------------------------------------------------------------------------------
def combine(head_probs: np.ndarray, prior_probs: np.ndarray, w: float, *, eps: float = EPS) -> np.ndarray:
    """``softmax(log p_head + w · log max(prior, eps))``, row-wise; ``w = 0`` returns ``head_probs``
    unchanged (the same array values, not a renormalised copy)."""
    head_probs = np.asarray(head_probs, dtype=float)
    if w == 0:
        return head_probs
    logp = np.log(np.clip(head_probs, 1e-12, None)) + w * np.log(np.maximum(prior_probs, eps))
    return np.exp(logp - logsumexp(logp, axis=1, keepdims=True))


def choose_weight(head_probs: np.ndarray, prior_probs: np.ndarray, y: np.ndarray, *,
                  weights: Sequence[float] = WEIGHTS, min_gain: float = 0.005) -> tuple[float, dict[float, float]]:
    """The prior's weight ``w`` that maximises the mean log-likelihood of the labels ``y`` under
    :func:`combine` on out-of-fold probabilities; ``w > 0`` only when it beats the head alone
    (``w = 0``) by more than ``min_gain`` nats per sample. Returns ``(w, {w: mean log-likelihood})``."""
    y = np.asarray(y, dtype=int)
    scores = {}
    for w in weights:
        p = combine(head_probs, prior_probs, w)
        scores[float(w)] = float(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
    base = scores.get(0.0, max(scores.values()))
    best = max(scores, key=scores.get)
    return (best if scores[best] > base + min_gain else 0.0), scores
