"""One version for the package, its image and its chart: ``zpilot.__version__``."""

from __future__ import annotations

import tomllib

import zpilot

from .chart import ROOT, chart_metadata, render


def test_the_package_takes_its_version_from_zpilot_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "zpilot.__version__"}


def test_chart_version_and_app_version_are_the_package_s():
    chart = chart_metadata()
    assert (chart["version"], chart["appVersion"]) == (zpilot.__version__, zpilot.__version__), (
        f"set charts/zpilot/Chart.yaml's version and appVersion to {zpilot.__version__} (zpilot/__init__.py)")


def test_the_default_zpilot_image_is_the_package_version():
    deployment = render().get("Deployment", "zpilot")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{zpilot.__version__}")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == zpilot.__version__
