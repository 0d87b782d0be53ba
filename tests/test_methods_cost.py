"""``campp methods``: every registered method listed with its passes and source; ``--measure``: what each costs
on a model, timed through explain() itself (counted here, never timed), refusals in one line, arguments
checked before torch."""

from __future__ import annotations

import pytest
from conftest import POOLED_NET, fresh_campp, write_image

from campp_cli.cam.methods import get_method, list_methods

#: Beside conftest's pooled net (net.py:build, a head CAM applies to): one whose head has none.
FLAT = '''

def flat():
    """A head that flattens the grid into a linear layer: no pooled head, so no CAM."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 3))
'''


@pytest.fixture()
def nets(tmp_path, monkeypatch):
    (tmp_path / "net.py").write_text(POOLED_NET + FLAT)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _rows(out: str) -> dict[str, str]:
    """The measured lines, by their label: '  NAME   0.0123 s   1.05x' or '  NAME   not for this model: ...'."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("  "):
            label, _, rest = line.strip().partition("  ")
            rows[label] = rest.strip()
    return rows


def test_the_list_has_every_registered_method_with_its_passes_and_source(run_cli):
    code, out, err = run_cli("methods")
    assert code == 0, err
    for name in list_methods():
        method = get_method(name)
        lines = [line for line in out.splitlines() if line.split(" ", 1)[0] == name]
        assert len(lines) == 1, name
        assert method.title in lines[0] and method.passes in lines[0] and method.reference in lines[0], name
    assert "campp methods --measure" in out


def test_measure_times_every_method_but_the_perturbation_ones(nets, run_cli):
    code, out, err = run_cli("methods", "--measure", "--model", "net.py:build", "--input-size", "32",
                             "--repeats", "1", "-gpu", "-1")
    assert code == 0, err
    rows = _rows(out)
    slow = [n for n in list_methods() if get_method(n).needs == "forward passes"]
    fast = [n for n in list_methods() if n not in slow]
    # CAM too (this head is a pooled linear layer), then all of them in one call
    assert list(rows) == ["two-map pass", *fast, f"the {len(fast)} in one call"]
    assert rows["two-map pass"].endswith(" 1.00x")
    for name in fast:
        seconds, ratio = rows[name].split(" s ")
        assert float(seconds) > 0 and float(ratio.rstrip("x")) > 0, name
    assert f"not measured (extra forward passes, one or more per channel): {', '.join(slow)}" in out
    assert out.splitlines()[0].startswith("net.py:build at ") and "cpu" in out.splitlines()[0]


def test_measure_names_what_the_model_cannot_have_and_goes_on(nets, run_cli):
    code, out, err = run_cli("methods", "--measure", "--model", "net.py:flat", "--input-size", "32",
                             "--methods", "cam,gradcam,scorecam", "--repeats", "1", "-gpu", "-1")
    assert code == 0, err
    rows = _rows(out)
    assert list(rows) == ["two-map pass", "cam", "gradcam", "scorecam", "the 2 in one call"]
    assert rows["cam"].startswith("not for this model: ") and "--methods" in rows["cam"]
    assert rows["scorecam"].endswith("x") and "not measured" not in out  # asked for: measured, nothing left out


def test_measure_on_a_photo(nets, run_cli):
    write_image(nets / "photo.png", 70, 40)
    code, out, err = run_cli("methods", "--measure", "--model", "net.py:build", "--input-size", "32",
                             "-f", "photo.png", "--methods", "gradcam", "--repeats", "1", "-gpu", "-1")
    assert code == 0, err
    assert "photo.png at 32x32" in out.splitlines()[0]
    assert list(_rows(out)) == ["two-map pass", "gradcam"]  # one method: no "in one call"


@pytest.mark.parametrize("args, flag", [
    (["--methods", "gradcm"], "--methods: unknown method 'gradcm'; did you mean gradcam?"),
    (["-f", "missing.png"], "-f missing.png: no such file"),
    (["--repeats", "0"], "--repeats"),
    (["--sscam-samples", "0"], "--sscam-samples"),
])
def test_bad_arguments_are_one_line_before_torch(nets, args, flag):
    code, loaded, err = fresh_campp(["methods", "--measure", "--model", "net.py:build", *args], nets)
    assert code == 2 and flag in err, err
    assert len(err.strip().splitlines()) == 1 and not loaded


@pytest.mark.parametrize("args, flag", [(["--arch", "resnet50"], "--arch"), (["--repeats", "3"], "--repeats"),
                                        (["--sscam-samples", "2"], "--sscam-samples"), (["-f", "x.png"], "-f")])
def test_options_of_measure_without_it_are_refused(run_cli, args, flag):
    code, out, err = run_cli("methods", *args)
    assert code == 2 and out == ""
    assert err.strip() == f"campp: error: {flag}: only with --measure (campp methods lists the methods; --measure " \
                          f"times them on a model)"


def test_measure_costs_times_explain_itself(monkeypatch):
    """The library's measurement: one untimed pass, then ``repeats`` calls of explain() per method, each cost
    the median of its calls and its ratio that over the two-map pass's median (a clock of the test's own)."""
    import torch

    from campp_cli.cam import cost
    from campp_cli.models.loading import load_classifier

    clf = load_classifier(model=torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3)), layer="1")
    calls = []
    # seconds of each call, in the order they are made: an untimed pass, the pass 3 times, then each
    # method's 3 calls, each after a call of the pass
    pass_times = iter([9.0, 2.0, 4.0, 3.0, 3.0, 2.0, 4.0, 6.0, 6.0, 5.0, 2.0, 2.0, 2.0])
    times = {"layercam": iter([5.0, 1.0, 6.0]), "eigencam": iter([8.0, 8.0, 2.0]),
             "layercam,eigencam": iter([6.0, 7.0, 6.0])}
    now = [0.0]

    def fake_explain(model, layer, x, methods, **kw):
        calls.append((methods, kw["settings"].get("variant")))
        now[0] += next(pass_times) if methods == "gradcam,gradcampp" else next(times[methods])

    monkeypatch.setattr("campp_cli.cam.explain.explain", fake_explain)
    monkeypatch.setattr(cost.time, "perf_counter", lambda: now[0])
    found = list(cost.measure_costs(clf, "layercam,eigencam", repeats=3, variant="paper"))
    assert [c.method for c in found] == ["gradcam,gradcampp", "layercam", "eigencam", "layercam,eigencam"]
    assert [c.seconds for c in found] == [3.0, 5.0, 8.0, 6.0]  # medians of the timed calls; the first untimed
    # each ratio: over the median of the passes timed beside it (3, 6 and 2)
    assert [c.ratio for c in found] == [1.0, 5.0 / 3.0, 8.0 / 6.0, 6.0 / 2.0]
    assert [m for m, _ in calls] == ["gradcam,gradcampp"] * 4 + ["gradcam,gradcampp", "layercam"] * 3 + \
        ["gradcam,gradcampp", "eigencam"] * 3 + ["gradcam,gradcampp", "layercam,eigencam"] * 3
    assert {v for _, v in calls} == {"paper"}


def test_measure_costs_refuses_bad_arguments():
    import torch

    from campp_cli.cam.cost import measure_costs
    from campp_cli.errors import UsageError
    from campp_cli.models.loading import load_classifier

    clf = load_classifier(model=torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 2)), layer="1")
    with pytest.raises(ValueError, match="repeats"):
        next(measure_costs(clf, repeats=0))
    with pytest.raises(UsageError, match="unknown method"):
        next(measure_costs(clf, "bogus"))
    with pytest.raises(ValueError, match=r"shape \(1, 3, S, S\)"):
        next(measure_costs(clf, "gradcam", image=torch.zeros(2, 3, 8, 8)))
