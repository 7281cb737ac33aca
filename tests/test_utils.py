import json
import re

import numpy as np
import pytest
import torch

from probml.metrics import relative_error
from probml.results import markdown_table, mean_se, mean_se_rows, write_table
from probml.utils import (
    check_batch_probabilities,
    check_finite,
    check_int,
    check_positive,
    make_generator,
    resolve_device,
    set_seed,
)


def test_set_seed_reproduces_all_generators():
    set_seed(11)
    a = (torch.rand(3), np.random.rand(3))  # noqa: NPY002
    set_seed(11)
    b = (torch.rand(3), np.random.rand(3))  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="seed"):
        set_seed(-1)


def test_make_generator_and_device():
    g = make_generator(5)
    assert torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=make_generator(5)))
    assert make_generator(g) is g
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):  # torch's own is a RuntimeError
        resolve_device("bogus")


def test_validation_helpers():
    with pytest.raises(ValueError, match="x must be finite"):
        check_finite("x", torch.tensor([1.0, float("nan")]))
    assert check_positive("rho", 2) == 2.0
    with pytest.raises(ValueError, match="rho"):
        check_positive("rho", 0)
    with pytest.raises(TypeError, match="rho"):
        check_positive("rho", "a")
    assert check_int("n", np.int64(3)) == 3 and check_int("n", 0, minimum=0) == 0
    assert check_int("decimals", -3, None) == -3  # no lower bound; still an integer
    with pytest.raises(TypeError, match="decimals must be an integer"):
        check_int("decimals", True, None)
    for bad in (2.5, float("nan"), True, "3"):
        with pytest.raises(TypeError, match="n must be an integer"):
            check_int("n", bad)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        check_int("n", 0)
    like = torch.zeros(3)
    p = check_batch_probabilities("p0", [0.2, 0.5, 0.9], like, "rewards")
    assert p.dtype == torch.float64 and p.tolist() == [0.2, 0.5, 0.9]
    with pytest.raises(ValueError, match=r"rewards and p0 must both have shape \(B,\)"):
        check_batch_probabilities("p0", [0.2, 0.5], like, "rewards")
    for bad in (1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="p0 must lie strictly inside"):
            check_batch_probabilities("p0", [0.2, bad, 0.5], like, "rewards")


def test_results_writer(tmp_path):
    rows = [{"a": 1, "b": 0.123456789}, {"a": 2, "c": "x"}]
    md = markdown_table(rows)
    assert md.splitlines()[0] == "| a | b | c |" and "0.1235" in md
    md_p, js_p = write_table(tmp_path, "t", rows, meta={"cmd": "x"})
    data = json.loads(js_p.read_text())
    assert data["rows"][0]["b"] == 0.123456789 and data["meta"]["cmd"] == "x"
    assert data["rows"] == rows and md_p.read_text() == md + "\n"  # every row, both files
    # strict JSON: NaN (a one-seed standard error) and inf are null, NumPy/torch values plain
    rows = [{"se": float("nan"), "x": np.float32(0.5), "t": torch.tensor([1.0, float("inf")])}]
    _, js_p = write_table(tmp_path, "nan", rows, meta={"n": np.int64(3)})

    def refuse(constant):  # Python's json accepts NaN/Infinity; strict parsers do not
        raise ValueError(f"not strict JSON: {constant}")

    data = json.loads(js_p.read_text(), parse_constant=refuse)
    assert data["rows"][0] == {"se": None, "x": 0.5, "t": [1.0, None]}
    assert data["meta"] == {"n": 3}
    m, se = mean_se([1.0, 3.0])
    assert m == 2.0 and se == pytest.approx(1.0)
    # the benchmarks' seed tables (drum, drum_real, grasp, grasp_llama)
    rows = mean_se_rows({"a": {"x": [1.0, 3.0], "y": [5.0]}, "b": {"x": [0.0, 0.0]}}, "method")
    assert rows[0]["method"] == "a" and rows[0]["x"] == 2.0 and rows[0]["x se"] == 1.0
    assert rows[0]["y"] == 5.0 and np.isnan(rows[0]["y se"])
    assert rows[1] == {"method": "b", "x": 0.0, "x se": 0.0}
    assert relative_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == 1.0


def test_seed_arguments_refuse_bools_and_a_none_seed_follows_set_seed():
    import random

    for fn in (set_seed, make_generator):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            fn(True)  # a bool is an int to Python, never a seed
    draws = []
    for seed in (1, 1, 2):
        set_seed(seed)
        draws.append(torch.rand(2, generator=make_generator(None)))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    set_seed(3)
    first = (random.random(), np.random.rand())  # noqa: NPY002
    set_seed(3)
    assert first == (random.random(), np.random.rand())  # noqa: NPY002


def test_progress_bar_only_on_a_terminal_and_never_when_quiet(monkeypatch):
    import sys

    import tqdm.auto

    from probml.utils import progress

    bars = []

    class Bar:
        def __init__(self, iterable, **kwargs):
            bars.append(kwargs)
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.delenv("PROBML_QUIET", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert list(progress(range(3), desc="steps", total=3)) == [0, 1, 2]
    assert len(bars) == 1 and bars[0]["desc"] == "steps" and bars[0]["total"] == 3
    assert list(progress(range(3), verbose=False)) == [0, 1, 2]
    monkeypatch.setenv("PROBML_QUIET", "1")
    assert list(progress(range(3))) == [0, 1, 2]
    monkeypatch.delenv("PROBML_QUIET")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file or CI
    assert list(progress(range(3))) == [0, 1, 2]
    assert len(bars) == 1


def test_validators_on_infinite_batched_and_misplaced_input():
    from probml.utils import cholesky_factor, module_list

    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rho must be finite and > 0"):
            check_positive("rho", bad)
        with pytest.raises(ValueError, match="x must be finite; it has 1 NaN/inf entries"):
            check_finite("x", torch.tensor([0.0, bad]))  # a tensor: checked by torch
    M = torch.tensor([[4.0, 2.0], [2.0, 3.0]])
    assert torch.allclose(cholesky_factor("cov", M), torch.linalg.cholesky(M))
    with pytest.raises(ValueError, match="cov must be symmetric positive definite"):
        cholesky_factor("cov", torch.stack([M, -M]))  # one bad matrix in a batch
    model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2)]), torch.nn.Linear(2, 2))
    assert module_list(model, "0", "layers") is model[0]
    with pytest.raises(ValueError, match="layers: '1' is a Linear, not a ModuleList"):
        module_list(model, "1", "layers")
    with pytest.raises(ValueError, match="layers: the model has no submodule 'blocks'"):
        module_list(model, "blocks", "layers")
    with pytest.raises(ValueError, match=r"rewards and p0 must both have shape \(B,\)"):
        check_batch_probabilities("p0", [[0.2], [0.5]], torch.zeros(2, 1), "rewards")
    from probml.utils import check_indices

    assert check_indices("prompts", [1, 0], 2, (2,)).tolist() == [1, 0]
    for bad in ([-1, 0], [0, 2]):  # -1 would index from the end without a word
        with pytest.raises(ValueError, match=r"prompts must be \(2,\) indices in \[0, 2\)"):
            check_indices("prompts", bad, 2, (2,))


def test_results_writer_empty_cells_paths_and_keys(tmp_path):
    assert markdown_table([{"a": 1, "b": 2}, {"a": 3}]).splitlines()[-1] == "| 3 |  |"
    meta = {"out": tmp_path / "x", "by_seed": {np.int64(1): 0.5}}  # a Path; a NumPy key
    _, js_p = write_table(tmp_path, "p", [{"a": 1}], meta=meta)
    data = json.loads(js_p.read_text())
    assert data["meta"] == {"out": str(tmp_path / "x"), "by_seed": {"1": 0.5}}
    with pytest.raises(ValueError, match="mean_se needs at least one value"):
        mean_se([])


def test_top_level_exports_resolve_lazily_to_their_modules():
    import importlib
    import subprocess
    import sys

    import probml

    for name in probml.__all__:
        value = getattr(probml, name)
        if name != "__version__":
            module = importlib.import_module(probml._EXPORTS[name])
            assert value is getattr(module, name)
    assert set(probml.__all__) <= set(dir(probml))
    with pytest.raises(AttributeError, match="no_such_name"):
        probml.no_such_name  # noqa: B018
    # importing the package loads no method module until one is asked for
    code = "import sys, probml; print(any(m.startswith('probml.inference') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_check_prior_dtype_and_device_each_on_their_own():
    """Callers pass only a dtype (transport, metalearners) or only a device (the Gaussian
    models); each is checked alone. A prior without a closed-form mean passes (its dtype and
    device are unknown); the device check runs without CUDA through the meta device."""
    from probml.utils import check_prior

    mvn = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))  # float32, CPU
    assert check_prior("prior", mvn, (2,), torch.float32) is mvn
    with pytest.raises(ValueError, match="prior must be built from torch.float64"):
        check_prior("prior", mvn, (2,), torch.float64)
    assert check_prior("prior", mvn, (2,), device="cpu") is mvn
    with pytest.raises(ValueError, match="prior must be built from tensors on meta"):
        check_prior("prior", mvn, (2,), device="meta")
    no_mean = torch.distributions.TransformedDistribution(
        torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 1.0), 1),
        [torch.distributions.transforms.ExpTransform()],
    )
    with pytest.raises(NotImplementedError):
        no_mean.mean  # noqa: B018 - the case under test
    assert check_prior("prior", no_mean, (2,), torch.float64, "meta") is no_mean
    # the right shape declared as a batch names the fix; another shape does not
    batch = torch.distributions.Normal(torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match=r"batch shape \(2, 3\) .*: \.to_event\(2\)\)$"):
        check_prior("prior", batch, (2, 3))
    with pytest.raises(ValueError, match=r"event shape \(\)$"):
        check_prior("prior", batch, (3,))


def test_cholesky_factor_reads_only_the_lower_triangle_and_auto_is_a_device():
    from probml.utils import cholesky_factor

    lower = torch.tensor([[4.0, 99.0], [2.0, 3.0]])  # the upper entry is never read
    want = torch.linalg.cholesky(torch.tensor([[4.0, 2.0], [2.0, 3.0]]))
    assert torch.equal(cholesky_factor("cov", lower), want)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected


def test_check_data_refuses_an_unknown_ndim_by_name():
    from probml.utils import check_data

    with pytest.raises(ValueError, match="ndim must be 1 or 2, got 3"):
        check_data("X", np.zeros((2, 2, 2)), ndim=3)
    # the fitted width is exact: a wider X is refused as a narrower one is
    for width in (2, 4):
        with pytest.raises(ValueError, match=r"X must have 3 columns \(as in fit\)"):
            check_data("X", np.zeros((2, width)), n_features=3)


def test_savable_module_round_trip_is_strict_and_honours_map_location(tmp_path):
    """``load`` rebuilds from the saved config, refuses a state dict that does not fit it (a
    missing or extra tensor) and passes ``map_location`` on to ``torch.load``."""
    from probml.utils import SavableModule

    class Lin(SavableModule):
        def __init__(self, d: int):
            super().__init__()
            self.config = {"d": d}
            self.lin = torch.nn.Linear(d, d)

    m = Lin(3)
    m.save(tmp_path / "m.pt")
    seen = []
    back = Lin.load(
        tmp_path / "m.pt", map_location=lambda storage, loc: seen.append(loc) or storage
    )
    assert seen and all(v == "cpu" for v in seen)
    assert all(
        torch.equal(a, b) for a, b in zip(m.state_dict().values(), back.state_dict().values())
    )
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    del blob["state_dict"]["lin.bias"]
    torch.save(blob, tmp_path / "short.pt")
    with pytest.raises(RuntimeError, match="lin.bias"):
        Lin.load(tmp_path / "short.pt")


def test_markdown_cells_use_significant_digits():
    """Floats get ``digits`` significant digits (``g`` format: small and large values keep
    their precision in scientific notation), in a single cell and through the table."""
    from probml.results import format_value

    assert format_value(1234567.0) == "1.235e+06" and format_value(0.000123456) == "0.0001235"
    assert format_value(3.14159, digits=2) == "3.1"
    table = markdown_table([{"a": 3.14159, "b": 2}], digits=2)
    assert table.splitlines()[2] == "| 3.1 | 2 |"


def test_check_finite_reads_arrays_in_numpy_without_a_torch_copy():
    """A read-only array (a pandas column's) is checked without torch's non-writable warning;
    NaN and inf are counted in arrays, lists and scalars alike."""
    import warnings

    a = np.array([1.0, 2.0])
    a.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_finite("a", a)
    b = np.array([1.0, np.nan, np.inf])
    b.setflags(write=False)
    for bad, n in (
        (b, 2),
        ([0.0, float("inf")], 1),
        (float("nan"), 1),
        (torch.tensor([np.nan]), 1),
    ):
        with pytest.raises(ValueError, match=f"x must be finite; it has {n} NaN/inf"):
            check_finite("x", bad)
    check_finite("k", np.arange(3))  # integers cannot be NaN
    for bad in (None, "1.0", [1.0, None]):  # torch refused these too, naming nothing
        with pytest.raises(TypeError, match="x must be numeric"):
            check_finite("x", bad)


def test_check_interval_and_a_string_for_a_number():
    """The shared range check: each end open or closed, NaN refused, the message in the
    library's form; a string is not read as a number (float("0.5") would), by this check or
    by check_positive, and neither is an array of several values."""
    from probml.utils import check_interval

    assert check_interval("p", np.float32(0.25)) == 0.25
    assert check_interval("p", torch.tensor(0.5)) == 0.5  # a one-element tensor is a number
    for closed, inside, outside, shown in (
        ("neither", 0.5, 0.0, "(0, 1)"),
        ("left", 0.0, 1.0, "[0, 1)"),
        ("right", 1.0, 0.0, "(0, 1]"),
        ("both", 1.0, 1.5, "[0, 1]"),
    ):
        assert check_interval("p", inside, closed=closed) == inside
        with pytest.raises(ValueError, match=rf"^p must be in {re.escape(shown)}, got {outside}$"):
            check_interval("p", outside, closed=closed)
    with pytest.raises(ValueError, match=r"eps must be in \[0, 0.5\), got 0.5"):
        check_interval("eps", 0.5, 0, 0.5, closed="left")
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\), got nan"):
        check_interval("p", float("nan"))
    with pytest.raises(ValueError, match="closed must be"):
        check_interval("p", 0.5, closed="open")
    for bad in ("0.5", b"0.5", None, np.array([0.2, 0.3]), [0.5]):
        with pytest.raises(TypeError, match="p must be a number"):
            check_interval("p", bad)
    # one value with a dimension is not a scalar either (float() read it; NumPy deprecates it)
    for bad in (np.array([0.5]), torch.tensor([0.5]), np.array([[0.5]])):
        for check in (check_interval, check_positive):
            with pytest.raises(TypeError, match=r"p must be a number \(a scalar\), got .* shape"):
                check("p", bad)
    with pytest.raises(TypeError, match="rho must be a number, got str '2'"):
        check_positive("rho", "2")  # was read as 2.0


def test_range_checked_arguments_name_a_string():
    """A string where the library takes a fraction or a probability failed in a comparison
    naming nothing (``'<' not supported between 'int' and 'str'``), or was read by float()."""
    from probml.datasets.ratio import make_ratio_data
    from probml.inference.advantage import SPOTracker
    from probml.inference.metalearners import QLearner
    from probml.inference.projection import GRASP
    from probml.models.transfer import BinaryShiftProblem

    X, w = np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2
    for name, call in (
        ("clip", lambda: QLearner(clip="0.1").fit(X, w, (np.arange(20) % 3 == 0) * 1.0)),
        ("discount", lambda: SPOTracker(torch.tensor([0.5]), discount="0.9")),
        ("propensity", lambda: make_ratio_data(100, propensity="0.5")),
        ("alpha", lambda: GRASP(torch.ones(3), mode="soft", alpha="0.5")),  # float() read it
        ("p", lambda: BinaryShiftProblem(p="0.15")),
    ):
        with pytest.raises(TypeError, match=rf"^{name} must be a number, got str"):
            call()


def test_a_list_of_names_is_not_one_string():
    """A single string is iterable: where a list of names is asked for, its characters were
    each read as a name (``add_lora(model, "attn.q")`` adapted every one-letter module, as
    the pattern ``.`` matches any letter). ``check_names`` refuses it, and every site that
    takes names uses it."""
    from torch import nn

    from probml.inference.projection import GRASP
    from probml.models.adapters import add_lora, module_side
    from probml.models.layers import MixtureOfActivationsFFN
    from probml.utils import check_names

    assert check_names("x", ("a", "b")) == ["a", "b"]
    assert check_names("x", (n for n in "ab")) == ["a", "b"]  # any iterable of strings
    for bad, words in (("ab", "the string"), (3, "int"), ([1, "a"], "hold strings")):
        with pytest.raises(TypeError, match=f"^x must .*{words}"):
            check_names("x", bad)
    for name, call in (
        ("targets", lambda: add_lora(nn.Sequential(nn.Linear(2, 2)), "0")),
        ("modules", lambda: GRASP(torch.ones(2), modules="attn.q")),
        ("dictionary", lambda: MixtureOfActivationsFFN(4, 8, dictionary="gelu")),
        ("write_names", lambda: module_side("blocks.0.o", write_names="o")),
    ):
        with pytest.raises(TypeError, match=f"^{name} must be a list of names"):
            call()


def test_check_binary_names_the_other_values_at_every_site():
    """One check for 0/1 data (treatment indicators, binary outcomes, group labels): a 0.5
    or a NaN is refused with the values found, not cast to an integer group."""
    from probml.inference.metalearners import QLearner
    from probml.metrics import expected_calibration_error, qini_curve
    from probml.utils import check_binary

    out = check_binary("w", [[0, 1], [1, 1]])
    assert out.dtype == np.float64 and out.shape == (2, 2)
    with pytest.raises(ValueError, match=r"^w must be binary \(0/1\); found the values 0.5, 2$"):
        check_binary("w", [0, 0.5, 1, 2, 0.5])
    with pytest.raises(ValueError, match="found the values nan"):
        check_binary("w", [0, float("nan")])
    many = np.arange(2, 10)
    with pytest.raises(ValueError, match=r"found the values 2, 3, 4, 5, 6, \.\.\.$"):
        check_binary("w", many)
    x = np.zeros((6, 2))
    w = np.array([0, 1, 0, 1, 0, 0.5])
    y = np.ones(6)
    with pytest.raises(ValueError, match=r"^w must be binary \(0/1\); found the values 0.5$"):
        QLearner().fit(x, w, y)
    with pytest.raises(ValueError, match=r"^w must be binary \(0/1\); found the values 0.5$"):
        qini_curve(np.arange(6.0), w, y)
    with pytest.raises(ValueError, match=r"^y must be binary \(0/1\); found the values 0.5$"):
        expected_calibration_error(np.full(6, 0.5), w)


def test_tensor_arguments_refuse_numpy_by_name():
    """Functions that compute in torch name a NumPy array by its argument (they failed on a
    missing tensor method: "'numpy.ndarray' object has no attribute 'double'")."""
    from probml.inference.pace import project_to_pd
    from probml.metrics import crps_ensemble, gaussian_kl
    from probml.utils import check_tensor

    t = torch.eye(2)
    assert check_tensor("x", t) is t
    a = np.eye(2)
    for call, name in (
        (lambda: relative_error(a, t), "estimate"),
        (lambda: relative_error(t, a), "truth"),
        (lambda: gaussian_kl(a, t), "Sigma"),
        (lambda: gaussian_kl(t, a), "Sigma_hat"),
        (lambda: crps_ensemble(a, t[0]), "particles"),
        (lambda: crps_ensemble(t, a[0]), "truth"),
        (lambda: crps_ensemble(t, t[0], log_weights=np.zeros(2)), "log_weights"),
        (lambda: project_to_pd(a), "M"),
    ):
        with pytest.raises(TypeError, match=f"^{name} must be a torch.Tensor, got ndarray$"):
            call()
    with pytest.raises(ValueError, match=r"^M must be a square d x d matrix, got shape \(2, 3\)$"):
        project_to_pd(torch.ones(2, 3))
    with pytest.raises(ValueError, match="^floor must be finite and > 0"):
        project_to_pd(torch.eye(2), floor=-1.0)  # kept a negative eigenvalue
    assert torch.allclose(project_to_pd(torch.diag(torch.tensor([-1.0, 2.0])), floor=0.5),
                          torch.diag(torch.tensor([0.5, 2.0])))  # fmt: skip


def test_device_arguments_go_through_resolve_device():
    """``LinearBandit(device=...)``, the drift filters' ``to``, and the ``device`` of
    ``train_posterior_net`` and ``offline_counts`` take what every entry point's device
    argument takes ("auto", "cuda:N") and name a bad one (``"cuda"`` without CUDA was
    torch's "not compiled with CUDA" assertion; "auto" its list of device types);
    ``train_posterior_net`` refuses before any simulation."""
    from probml.guides.amortized import train_posterior_net
    from probml.inference.sequence_rl import AdditionTask, addition_policy, offline_counts
    from probml.models.experiments import LocationFinding
    from probml.models.rollouts import DriftFilter, LinearBandit, PromptDriftFilter

    gen = torch.Generator().manual_seed(0)
    auto = resolve_device("auto")
    assert LinearBandit(num_prompts=4, device="auto").features.device.type == auto.type
    assert DriftFilter().to("auto").posterior.device.type == auto.type
    assert PromptDriftFilter(3).to("auto").log_q.device.type == auto.type
    calls = (
        lambda d: LinearBandit(num_prompts=4, device=d),
        lambda d: DriftFilter().to(d),
        lambda d: PromptDriftFilter(3).to(d),
        lambda d: train_posterior_net(LocationFinding(), horizon=2, num_steps=1, device=d),
        lambda d: offline_counts(addition_policy(16, 1, 2), AdditionTask(4), 2, gen, d),
    )
    for call in calls:
        with pytest.raises(ValueError, match="^device must be 'cpu', 'cuda', 'cuda:N' or 'auto'"):
            call("bogus")
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="CUDA is not available"):
                call("cuda")


def test_estimators_used_before_fit_raise_scikit_learns_not_fitted_error():
    """Scikit-learn's ``NotFittedError`` (what code written for its estimators catches) that is
    still the ``RuntimeError`` the library raised before."""
    from sklearn.exceptions import NotFittedError as SkNotFitted

    from probml import DRUM, PACEGGM, BayesianQLearner, FairRegressor, NotFittedError, QLearner
    from probml.exceptions import NotFittedError as defined
    from probml.inference.pace import covariance_posterior

    assert NotFittedError is defined  # the top-level name is probml.exceptions' class

    X = np.zeros((3, 2))
    for call in (
        lambda: QLearner().effect(X),
        lambda: BayesianQLearner().credible_interval(X),
        lambda: FairRegressor().predict(X, np.zeros(3)),
        lambda: DRUM().predict(X),
        lambda: covariance_posterior(PACEGGM(epsilon=1.0)),
    ):
        with pytest.raises(NotFittedError, match="not fitted") as info:
            call()
        assert isinstance(info.value, SkNotFitted) and isinstance(info.value, RuntimeError)
