"""Deploy an exported application package: to a local Docker engine or to Vespa Cloud, through pyvespa.

``deploy_package`` picks the target the way a user would: Vespa Cloud when a tenant and application are named,
otherwise the local Docker engine when one answers; with neither it raises :class:`VespaDeployError` saying what
to start or pass, and that ``vespa deploy APP_DIR`` (the Vespa CLI) works on the same folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import VespaDeployError

Target = Literal["auto", "docker", "cloud"]
APPLICATION_NAME = "imagesearch"


@dataclass(frozen=True)
class Deployment:
    """Where the application answers once deployed."""

    target: str
    url: str
    app: Any = None


def check_package(package: Path) -> None:
    """An application package has ``services.xml`` and at least one schema; say how to get one otherwise."""
    if not (package / "services.xml").is_file() or not list((package / "schemas").glob("*.sd")):
        raise VespaDeployError(f"{package} is not a Vespa application package (no services.xml and schemas/*.sd): "
                               f"write one with `clipseek vespa export {package}` first")


def docker_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    try:
        import docker
    except ImportError:
        return "the `docker` package is missing (pip install 'clipseek[vespa]')"
    try:
        docker.from_env().ping()
    except Exception as exc:  # docker raises DockerException or transport errors alike
        return f"no Docker engine answers ({exc.__class__.__name__}: {str(exc)[:160]})"
    return None


def deploy_package(package: Path, *, target: Target = "auto", tenant: str | None = None,
                   application: str | None = None, key: Path | None = None, instance: str = "default",
                   port: int = 8080) -> Deployment:
    """Deploy ``package`` and return where it answers (see the module notes for how the target is picked)."""
    check_package(package)
    cloud = bool(tenant or application)
    if target == "cloud" or (target == "auto" and cloud):
        if not (tenant and application):
            raise VespaDeployError("deploying to Vespa Cloud needs both --tenant and --application "
                                   "(from console.vespa-cloud.com)")
        return _deploy_cloud(package, tenant, application, key, instance)
    problem = docker_problem()
    if problem is None:
        return _deploy_docker(package, port)
    if target == "docker":
        raise VespaDeployError(f"cannot deploy to Docker: {problem}. Start Docker (or set DOCKER_HOST) and retry")
    raise VespaDeployError(
        f"nowhere to deploy: {problem}, and no Vespa Cloud application was named. Start Docker (or set "
        "DOCKER_HOST) to run Vespa locally, or pass --tenant T --application A [--key API_KEY.pem] for Vespa Cloud, "
        f"or deploy the folder with the Vespa CLI: `vespa deploy {package}`")


def _pyvespa() -> Any:
    try:
        import vespa.deployment
    except ImportError as exc:
        raise VespaDeployError("deploying needs pyvespa: pip install 'clipseek[vespa]'") from exc
    return vespa.deployment


def _deploy_docker(package: Path, port: int) -> Deployment:
    deployment = _pyvespa()
    try:
        app = deployment.VespaDocker(port=port).deploy_from_disk(APPLICATION_NAME, package)
    except Exception as exc:
        raise VespaDeployError(f"the Docker deployment of {package} failed: {exc}") from exc
    return Deployment("docker", f"http://localhost:{port}", app)


def _deploy_cloud(package: Path, tenant: str, application: str, key: Path | None, instance: str) -> Deployment:
    for label, value in (("tenant", tenant), ("application", application), ("instance", instance)):
        if not re.fullmatch(r"[a-z][a-z0-9-]*", value):
            raise VespaDeployError(f"--{label} {value!r} is not a Vespa Cloud name (lower-case letters, digits, "
                                   "dashes; a letter first)")
    deployment = _pyvespa()
    try:
        cloud = deployment.VespaCloud(tenant=tenant, application=application, application_root=str(package),
                                      key_location=str(key) if key else None, instance=instance)
        app = cloud.deploy(instance=instance)
    except Exception as exc:
        raise VespaDeployError(f"the Vespa Cloud deployment of {package} to {tenant}.{application} failed: {exc}. "
                               "Check the API key (--key) or run `vespa auth login`") from exc
    return Deployment("cloud", str(getattr(app, "url", "")), app)
