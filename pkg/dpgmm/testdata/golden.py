#!/usr/bin/python3
"""Golden fixtures for pkg/dpgmm from scikit-learn's BayesianGaussianMixture.

Run from this directory with Debian's python3-sklearn
(apt-get install -y python3-sklearn):

    /usr/bin/python3 golden.py            # write the data sets and golden.json
    /usr/bin/python3 golden.py --bench 7  # time sklearn's fit on eustock_dax_z, K=10

Data sets written here (the Go tests read only these files):

    synthetic.csv     1500 x 4, three well-separated Gaussians, column "label"
                      is the true component
    eustock_dax.csv   features of the DAX column of ../../../../shared/data/eustock.csv
                      (1830 x 6): log_return, volatility_10, volatility_30,
                      momentum_10, momentum_30, drawdown_0, as regime.proto
                      defines them
    eustock_dax_z.csv the same, z-scored per column (population std), as
                      RegimeService fits by default

golden.json holds, per case, the configuration, the responsibilities sklearn
started from (labels when one-hot, otherwise the full matrix), and sklearn's
result: weights_, means_, covariances_, weight_concentration_,
mean_precision_, degrees_of_freedom_, lower_bound_, the lower bound after
every iteration, n_iter_, converged_, and predict_proba /
_estimate_weighted_log_prob for some rows.
"""

import json
import os
import statistics
import sys
import time
import warnings

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture

warnings.filterwarnings("ignore", category=ConvergenceWarning)

HERE = os.path.dirname(os.path.abspath(__file__))
EUSTOCK = os.path.join(HERE, "..", "..", "..", "..", "shared", "data", "eustock.csv")
FEATURES = ["log_return", "volatility_10", "volatility_30", "momentum_10", "momentum_30", "drawdown_0"]


class Recording(BayesianGaussianMixture):
    """BayesianGaussianMixture that records its initial responsibilities
    and the lower bound after every iteration."""

    def _initialize(self, X, resp):
        self.init_resps_ = getattr(self, "init_resps_", []) + [np.array(resp, copy=True)]
        self.bounds_ = getattr(self, "bounds_", []) + [[]]
        super()._initialize(X, resp)

    def _compute_lower_bound(self, log_resp, log_prob_norm):
        lb = super()._compute_lower_bound(log_resp, log_prob_norm)
        self.bounds_[-1].append(float(lb))
        return lb


def synthetic():
    rng = np.random.RandomState(20240601)
    centers = np.array([[0.0, 0.0, 0.0, 0.0], [6.0, 6.0, 0.0, 0.0], [0.0, 6.0, 6.0, -6.0]])
    scales = [1.0, 0.7, 1.3]
    X, y = [], []
    for k, (c, s) in enumerate(zip(centers, scales)):
        A = rng.normal(size=(4, 4)) * 0.3 + np.eye(4)
        Z = rng.normal(size=(500, 4)) @ A.T * s + c
        X.append(Z)
        y += [k] * 500
    X = np.vstack(X)
    y = np.array(y)
    perm = rng.permutation(len(y))
    return X[perm], y[perm]


def eustock_features():
    import csv

    with open(EUSTOCK) as f:
        rows = list(csv.DictReader(f))
    close = np.array([float(r["DAX"]) for r in rows])
    ret = np.diff(np.log(close))  # ret[t-1] = ln(c_t / c_{t-1})
    warm = 30
    out = []
    for t in range(warm, len(close)):
        r = ret[t - 1]
        v10 = np.std(ret[t - 10 : t], ddof=1)
        v30 = np.std(ret[t - 30 : t], ddof=1)
        m10 = np.log(close[t] / close[t - 10])
        m30 = np.log(close[t] / close[t - 30])
        dd = close[t] / np.max(close[: t + 1]) - 1
        out.append([r, v10, v30, m10, m30, dd])
    X = np.array(out)
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, Z


def write_csv(name, header, X, labels=None):
    with open(os.path.join(HERE, name), "w") as f:
        f.write(",".join(header + (["label"] if labels is not None else [])) + "\n")
        for i, row in enumerate(X):
            cells = [repr(float(v)) for v in row]
            if labels is not None:
                cells.append(str(int(labels[i])))
            f.write(",".join(cells) + "\n")


def fit_case(name, data, X, rows, spread=True, **kw):
    m = Recording(weight_concentration_prior_type="dirichlet_process", covariance_type="full", **kw)
    m.fit(X)
    assert len(m.init_resps_) == 1, "one initialisation per golden case"
    resp = m.init_resps_[0]
    init = {}
    if np.all((resp == 0) | (resp == 1)) and np.all(resp.sum(axis=1) <= 1):
        # one-hot rows (kmeans) or rows of zeros (k-means++, random_from_data)
        init["init_labels"] = [int(np.argmax(r)) if r.sum() == 1 else -1 for r in resp]
    else:
        init["init_resp"] = resp.tolist()
    case = {
        "name": name,
        "data": data,
        "config": {k: (v if not isinstance(v, np.ndarray) else v.tolist()) for k, v in kw.items()},
        **init,
        "weights": m.weights_.tolist(),
        "means": m.means_.tolist(),
        "covariances": [c.ravel().tolist() for c in m.covariances_],
        "weight_concentration": [m.weight_concentration_[0].tolist(), m.weight_concentration_[1].tolist()],
        "mean_precision": m.mean_precision_.tolist(),
        "degrees_of_freedom": m.degrees_of_freedom_.tolist(),
        "lower_bound": float(m.lower_bound_),
        "lower_bounds": m.bounds_[0],
        "n_iter": int(m.n_iter_),
        "converged": bool(m.converged_),
        "rows": rows,
        "predict_proba": m.predict_proba(X[rows]).tolist(),
        "weighted_log_prob": m._estimate_weighted_log_prob(X[rows]).tolist(),
    }
    if spread:
        # The same fit from scikit-learn's own initialisation with seeds 0..9
        # (n_init=1 each), and with n_init=10: what a Go fit from its own
        # initialisation is compared with.
        seeds = {k: v for k, v in kw.items() if k != "random_state"}
        case["seed_lower_bounds"] = [
            float(BayesianGaussianMixture(weight_concentration_prior_type="dirichlet_process", random_state=s, **seeds).fit(X).lower_bound_)
            for s in range(10)
        ]
        b = BayesianGaussianMixture(weight_concentration_prior_type="dirichlet_process", random_state=0, n_init=10, **seeds).fit(X)
        case["best_of_10"] = {"lower_bound": float(b.lower_bound_), "weights": b.weights_.tolist(), "means": b.means_.tolist()}
    eff = int(np.sum(m.weights_ > 0.01))
    print(f"{name}: lower_bound={m.lower_bound_:.10g} n_iter={m.n_iter_} converged={m.converged_} effective={eff}", file=sys.stderr)
    return case


def main():
    Xs, ys = synthetic()
    write_csv("synthetic.csv", ["x0", "x1", "x2", "x3"], Xs, ys)
    Xe, Ze = eustock_features()
    write_csv("eustock_dax.csv", FEATURES, Xe)
    write_csv("eustock_dax_z.csv", FEATURES, Ze)
    rows = [0, 1, 2, 3, 10, 100, 500, 1000, 1499]
    cases = [
        fit_case("synthetic_kmeans", "synthetic.csv", Xs, rows, n_components=10, random_state=1),
        fit_case("eustock_z_kmeans", "eustock_dax_z.csv", Ze, rows, n_components=10, random_state=0),
        fit_case("eustock_raw_kmeans", "eustock_dax.csv", Xe, rows, n_components=10, random_state=0),
        fit_case(
            "eustock_z_priors",
            "eustock_dax_z.csv",
            Ze,
            rows,
            n_components=6,
            random_state=3,
            weight_concentration_prior=0.5,
            mean_precision_prior=0.1,
            mean_prior=np.zeros(6),
            degrees_of_freedom_prior=8.0,
            covariance_prior=np.eye(6) * 0.5,
            tol=1e-5,
            reg_covar=1e-4,
            max_iter=300,
        ),
        fit_case(
            "synthetic300_random",
            "synthetic.csv:300",
            Xs[:300],
            [0, 1, 2, 299],
            spread=False,
            n_components=5,
            random_state=2,
            init_params="random",
            max_iter=40,
        ),
    ]
    with open(os.path.join(HERE, "golden.json"), "w") as f:
        json.dump({"sklearn": sklearn.__version__, "numpy": np.__version__, "cases": cases}, f, indent=None, separators=(",", ":"))
        f.write("\n")


def bench(reps):
    _, Ze = eustock_features()
    times = []
    for i in range(reps):
        m = BayesianGaussianMixture(n_components=10, weight_concentration_prior_type="dirichlet_process", random_state=0)
        t0 = time.perf_counter()
        m.fit(Ze)
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "sklearn": sklearn.__version__,
                "n": Ze.shape[0],
                "d": Ze.shape[1],
                "K": 10,
                "n_iter": int(m.n_iter_),
                "reps": reps,
                "median_s": statistics.median(times),
                "times_s": times,
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        bench(int(sys.argv[2]) if len(sys.argv) > 2 else 7)
    else:
        main()
