#!/usr/bin/env python3
"""Checks that the container image and the Kubernetes manifests point at
what the alertsvc binary really has: subcommands and their options, HTTP
ports and probe paths, config keys behind ALERTSVC__* variables, the config
files the pods mount, secrets taken only from Secrets, a security context
the image can run under, enrich's stable identity, notify's ledger, a
PrometheusRule over real metrics and README runbook sections, and a
Grafana dashboard over the real metrics.

    scripts/check_deploy.py --bin target/debug/alertsvc \
        base=/tmp/base.yaml dev=/tmp/dev.yaml prod=/tmp/prod.yaml

Each NAME=FILE is one `kubectl kustomize` rendering (multi-document YAML).
Run by scripts/check-deploy.sh, which renders them first. Exits non-zero
with one line per failure. Needs PyYAML (a dependency of
kubernetes-validate, which check-deploy.sh uses too).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("check_deploy.py: PyYAML is missing (pip install pyyaml)")

ROOT = Path(__file__).resolve().parent.parent

# Environment variables the binary reads that are not ALERTSVC__A__B keys:
# these, plus any "ALERTSVC_NAME" string literal in src/.
PLAIN_ENV = {"ALERTSVC_ENV", "ALERTSVC_INSTANCE_ID", "ALERTSVC_CONFIG_DIR"}
PLAIN_ENV |= {
    name
    for source in (ROOT / "src").rglob("*.rs")
    for name in re.findall(r'"(ALERTSVC_[A-Z0-9_]+)"', source.read_text())
    if "__" not in name and "TEST" not in name
}

# Secret config keys (DESIGN §3): never a literal in a manifest, only from a
# Secret. Some are absent from config/default.toml (commented out or unset
# by default) yet are real keys. `*` stands for any one key component.
SECRET_KEYS = [
    ("kafka", "sasl_username"),
    ("kafka", "sasl_password"),
    ("schema_registry", "username"),
    ("schema_registry", "password"),
    ("notify", "slack", "bot_token"),
    ("notify", "slack", "signing_secret"),
    ("notify", "ledger", "database_url"),
    ("produce", "state", "database_url"),
    ("produce", "sources", "*", "url"),
]
# Real keys that config/default.toml leaves out (commented out there).
OPTIONAL_KEYS = [
    ("schema_registry", "url"),
    ("schema_registry", "timeout"),
    ("produce", "sources", "*", "endpoint"),
    ("produce", "sources", "*", "key_file"),
]

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
LONG_RUNNING = {"enrich", "notify"}  # and `produce` without --once


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, ok: bool, where: str, message: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{where}: {message}")
        return ok

    def fail(self, where: str, message: str) -> None:
        self.check(False, where, message)


C = Checker()
CONFIG_RUNS: list[tuple[str, int]] = []


# ---------------------------------------------------------------- helpers


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def key_matches(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    return len(path) == len(pattern) and all(
        p == "*" or p == c for c, p in zip(path, pattern)
    )


def key_in_toml(path: tuple[str, ...], table: dict) -> bool:
    node = table
    for component in path:
        if not isinstance(node, dict) or component not in node:
            return False
        node = node[component]
    return True


def env_key_path(name: str) -> tuple[str, ...]:
    return tuple(name[len("ALERTSVC__"):].lower().split("__"))


def port_of(addr: str) -> int:
    return int(str(addr).rsplit(":", 1)[1])


def seconds(duration: str) -> float:
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", str(duration)):
        total += float(number) * units[unit]
    return total


def tracked_files(under: str) -> list[str]:
    """The repository's files below `under`: tracked, or new and not
    ignored by .gitignore (falls back to the file system outside git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "--", under],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        out = sorted({f for f in out if (ROOT / f).is_file()})
        if out:
            return out
    except (OSError, subprocess.CalledProcessError):
        pass
    base = ROOT / under
    if base.is_file():
        return [under]
    return [str(p.relative_to(ROOT)) for p in base.rglob("*") if p.is_file()]


# ----------------------------------------------------------- the binary


class Binary:
    def __init__(self, path: str) -> None:
        self.path = str(Path(path).resolve())
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        top = self.help([])
        self.subcommands = self.section(top, "Commands") - {"help"}
        self.global_options = self.options(top)
        self._sub_help: dict[tuple[str, ...], str] = {}

    def help(self, args: list[str]) -> str:
        result = subprocess.run(
            [self.path, *args, "--help"], capture_output=True, text=True,
            env=self.env, timeout=30,
        )
        if result.returncode != 0:
            sys.exit(f"check_deploy.py: `{self.path} {' '.join(args)} --help` failed:\n{result.stderr}")
        return result.stdout

    @staticmethod
    def section(text: str, title: str) -> set[str]:
        names, inside = set(), False
        for line in text.splitlines():
            if line.startswith(f"{title}:"):
                inside = True
                continue
            if inside:
                if not line.strip():
                    break
                names.add(line.split()[0])
        return names

    @staticmethod
    def options(text: str) -> set[str]:
        return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))

    def sub_help(self, path: tuple[str, ...]) -> str:
        if path not in self._sub_help:
            self._sub_help[path] = self.help(list(path))
        return self._sub_help[path]

    def config_check(self, config_dir: Path, env: dict[str, str]) -> tuple[int, str]:
        with tempfile.TemporaryDirectory() as cwd:
            result = subprocess.run(
                [self.path, "--config-dir", str(config_dir), "config", "check"],
                capture_output=True, text=True, timeout=60, cwd=cwd,
                env={**self.env, **env},
            )
        return result.returncode, result.stderr.strip()


# ----------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path) -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, line) with continuations joined."""
    out, buf, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip(), start))
        buf = ""
    return out


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                regex += ".*"
                i += 2
                if pattern.startswith("/", i):
                    regex = regex[:-2] + "(?:.*/)?"
                    i += 1
                continue
            ch = pattern[i]
            regex += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
            i += 1
        patterns.append((negate, re.compile(f"^{regex}$")))
    return patterns


def ignored(rel: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: a pattern matches the path or one of its parents; the
    last matching pattern wins."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in patterns:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


class Image:
    """What the runtime image promises: entrypoint, user, workdir, config dir."""

    def __init__(self) -> None:
        self.entrypoint: list[str] = []
        self.uid: int | None = None
        self.workdir = "/"
        self.config_dir = "config"
        self.exposed: set[int] = set()


def check_dockerfile(default_toml: dict) -> Image:
    where = "Dockerfile"
    path = ROOT / "Dockerfile"
    image = Image()
    if not C.check(path.exists(), where, "missing"):
        return image
    instructions = dockerfile_instructions(path)
    stages = [i for i, (word, _, _) in enumerate(instructions) if word == "FROM"]
    C.check(len(stages) >= 2, where, "must be multi-stage (a build stage and a runtime stage)")
    for word, rest, line in instructions:
        if word == "FROM":
            ref = rest.split()[0]
            C.check(
                ":" in ref.split("/")[-1] or "@" in ref,
                f"{where}:{line}", f"base image `{ref}` is not pinned to a tag or digest",
            )
    patterns = dockerignore_patterns()
    copied: set[str] = set()
    runtime_start = stages[-1] if stages else 0
    for index, (word, rest, line) in enumerate(instructions):
        if word == "COPY" or word == "ADD":
            args = shlex.split(rest)
            if any(a.startswith("--from") for a in args):
                continue
            args = [a for a in args if not a.startswith("--")]
            if args and args[0].startswith("["):
                args = json.loads(rest)
            for source in args[:-1]:
                rel = source.rstrip("/") or "."
                matches = glob.glob(str(ROOT / rel))
                if not C.check(bool(matches), f"{where}:{line}", f"COPY source `{source}` does not exist in the repository"):
                    continue
                copied.add(rel.split("/")[0])
                excluded = [f for f in tracked_files(rel) if ignored(f, patterns)]
                C.check(
                    not excluded, f"{where}:{line}",
                    f"COPY source `{source}`: .dockerignore leaves out {', '.join(excluded[:5])}",
                )
        if index < runtime_start:
            continue
        if word == "ENTRYPOINT":
            image.entrypoint = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        elif word == "USER":
            user = rest.split(":")[0]
            if C.check(user.isdigit(), f"{where}:{line}", f"USER `{rest}` must be numeric (runAsNonRoot verifies a numeric UID)"):
                image.uid = int(user)
                C.check(image.uid != 0, f"{where}:{line}", "USER must not be root")
        elif word == "WORKDIR":
            image.workdir = rest
        elif word == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                if name == "ALERTSVC_CONFIG_DIR":
                    image.config_dir = value.strip('"')
        elif word == "EXPOSE":
            image.exposed |= {int(p.split("/")[0]) for p in rest.split()}
    C.check(image.uid is not None, where, "the runtime stage sets no USER")
    C.check(bool(image.entrypoint), where, "the runtime stage sets no ENTRYPOINT")
    # Every HTTP port of the binary is exposed.
    for stage in ("enrich", "notify", "produce"):
        addr = default_toml.get(stage, {}).get("http_addr")
        if addr:
            C.check(port_of(addr) in image.exposed, where, f"EXPOSE lacks {port_of(addr)} ({stage}.http_addr)")
    # Compile-time inputs: the crate embeds migrations with sqlx::migrate!.
    for source in sorted((ROOT / "src").rglob("*.rs")):
        for arg in re.findall(r'migrate!\(\s*"([^"]+)"', source.read_text()):
            top = arg.lstrip("./").split("/")[0]
            C.check(top in copied, where, f"`{source.relative_to(ROOT)}` embeds `{arg}` at compile time, but `{top}` is not copied into the build")
    # Cargo refuses a manifest whose declared targets are missing: the
    # dependency layer must stub every [[bench]], [[test]] and [[example]].
    text = path.read_text()
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for kind, directory in (("bench", "benches"), ("test", "tests"), ("example", "examples")):
        for target in manifest.get(kind, []):
            target_path = target.get("path") or f"{directory}/{target['name']}.rs"
            C.check(
                target_path in text, where,
                f"the dependency layer does not stub [[{kind}]] `{target['name']}` ({target_path}); cargo would refuse the manifest",
            )
    return image


# ------------------------------------------------------------- manifests


def pod_template(obj: dict) -> dict | None:
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template")
    if kind in WORKLOAD_KINDS:
        return spec.get("template")
    return None


def selector_matches(selector: dict, labels: dict) -> bool:
    wanted = (selector or {}).get("matchLabels", selector or {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(global options, the rest) of a container's args."""
    i, head = 0, []
    while i < len(args) and args[i].startswith("--"):
        head.append(args[i])
        if "=" not in args[i] and args[i] in ("--config-dir", "--config"):
            i += 1
            if i < len(args):
                head.append(args[i])
        i += 1
    return head, args[i:]


class Rendering:
    def __init__(self, name: str, path: Path, binary: Binary, image: Image, default_toml: dict) -> None:
        self.name = name
        self.binary = binary
        self.image = image
        self.default_toml = default_toml
        self.docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        self.configmaps = {
            d["metadata"]["name"]: {**(d.get("data") or {})}
            for d in self.docs if d.get("kind") == "ConfigMap"
        }
        self.workloads = [d for d in self.docs if pod_template(d) is not None]
        self.claims = {d["metadata"]["name"] for d in self.docs if d.get("kind") == "PersistentVolumeClaim"}
        self.config_runs: dict[str, tuple[str, int, str]] = {}
        self.secret_refs: set[tuple[str, str]] = set()  # (secret, key or "")

    def where(self, obj: dict, extra: str = "") -> str:
        return f"{self.name}: {obj['kind']}/{obj['metadata']['name']}{extra}"

    # -- per container --------------------------------------------------

    def container_env(self, container: dict, where: str) -> tuple[dict[str, str], dict[str, str], set[str]]:
        """(literal values, values for `config check`, all names)."""
        literal, for_check, names = {}, {}, set()
        for source in container.get("envFrom") or []:
            ref = source.get("configMapRef")
            if ref:
                data = self.configmaps.get(ref["name"])
                if data is None:
                    C.check(bool(ref.get("optional")), where, f"envFrom ConfigMap `{ref['name']}` is not in the rendering")
                    continue
                for k, v in data.items():
                    literal[k] = for_check[k] = str(v)
                    names.add(k)
            if source.get("secretRef"):
                C.fail(where, "envFrom secretRef hides which variables are set; use env[].valueFrom.secretKeyRef")
        for var in container.get("env") or []:
            name = var["name"]
            names.add(name)
            if "value" in var:
                literal[name] = for_check[name] = str(var["value"])
                continue
            source = var.get("valueFrom") or {}
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                self.secret_refs.add((ref["name"], ref["key"]))
                literal.pop(name, None)
                if ref.get("optional"):
                    for_check.pop(name, None)  # the Secret may lack it: unset
                elif name.endswith("DATABASE_URL") or name.endswith("__URL"):
                    for_check[name] = "postgres://alertsvc:placeholder@postgres.invalid:5432/alertsvc"
                elif name.endswith("BOT_TOKEN"):
                    for_check[name] = "xoxb-placeholder"
                else:
                    for_check[name] = "placeholder"
            elif "fieldRef" in source:
                for_check[name] = "pod-placeholder"
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                value = self.configmaps.get(ref["name"], {}).get(ref["key"])
                if C.check(value is not None or ref.get("optional"), where, f"env {name}: ConfigMap key {ref['name']}/{ref['key']} not in the rendering") and value is not None:
                    literal[name] = for_check[name] = value
        return literal, for_check, names

    def check_env_names(self, names: set[str], literal: dict[str, str], where: str) -> None:
        secret_names = set()
        for name in sorted(names):
            if name.startswith("ALERTSVC__"):
                path = env_key_path(name)
                is_secret = any(key_matches(path, p) for p in SECRET_KEYS)
                known = (
                    key_in_toml(path, self.default_toml)
                    or is_secret
                    or any(key_matches(path, p) for p in OPTIONAL_KEYS)
                )
                C.check(known, where, f"env {name} names no config key (`{'.'.join(path)}` is not in config/default.toml nor a known secret key)")
                if is_secret:
                    secret_names.add(name)
            elif name.startswith("ALERTSVC_"):
                C.check(name in PLAIN_ENV, where, f"env {name} is not read by the binary (known: {', '.join(sorted(PLAIN_ENV))}; config keys take a double underscore, ALERTSVC__SECTION__KEY)")
        for name in sorted(secret_names):
            C.check(name not in literal, where, f"env {name} is a secret: take it from a Secret (valueFrom.secretKeyRef), never a literal value")

    def materialize(self, pod: dict, container: dict, config_dir: str, where: str) -> dict[str, str] | None:
        mount = next((m for m in container.get("volumeMounts") or [] if m["mountPath"].rstrip("/") == config_dir.rstrip("/")), None)
        if not C.check(mount is not None, where, f"nothing is mounted at the config dir {config_dir} (the image's copy would be used, not the ConfigMap)"):
            return None
        volume = next((v for v in pod["spec"].get("volumes") or [] if v["name"] == mount["name"]), None)
        if not C.check(volume is not None, where, f"volume `{mount['name']}` is not defined"):
            return None
        sources = []
        if "configMap" in volume:
            sources = [{"configMap": volume["configMap"]}]
        elif "projected" in volume:
            sources = volume["projected"].get("sources") or []
        else:
            C.fail(where, f"config volume `{volume['name']}` is neither a configMap nor a projected volume")
            return None
        files: dict[str, str] = {}
        for source in sources:
            cm = source.get("configMap")
            if not cm:
                continue
            data = self.configmaps.get(cm["name"])
            if data is None:
                C.check(bool(cm.get("optional")), where, f"ConfigMap `{cm['name']}` is not in the rendering")
                continue
            items = cm.get("items")
            if items:
                for item in items:
                    if C.check(item["key"] in data, where, f"volume item key `{item['key']}` is not in ConfigMap `{cm['name']}`"):
                        files[item["path"]] = data[item["key"]]
            else:
                files.update(data)
        C.check("default.toml" in files, where, f"the config volume has no default.toml at {config_dir}/default.toml")
        for rel in tracked_files("config"):
            inner = rel[len("config/"):]
            if inner != "default.toml" and inner.split("/")[0] not in ("schemas", "templates", "queries"):
                continue
            if C.check(inner in files, where, f"config volume lacks {inner} (config/{inner} is not mounted at {config_dir}/{inner})"):
                C.check(files[inner] == (ROOT / rel).read_text(), where, f"{config_dir}/{inner} differs from config/{inner}")
        return files

    def check_container(self, obj: dict, pod: dict, container: dict) -> None:
        where = self.where(obj, f" container {container['name']}")
        spec = pod["spec"]
        # Command and args: a real subcommand and real options.
        command = container.get("command")
        C.check(command is None or command == self.image.entrypoint, where, f"command {command} is not the image's entrypoint {self.image.entrypoint}")
        args = [str(a) for a in container.get("args") or []]
        head, rest = split_args(args)
        if not C.check(bool(rest) and rest[0] in self.binary.subcommands, where, f"args {args} do not start with a subcommand of alertsvc ({', '.join(sorted(self.binary.subcommands))})"):
            return
        sub = rest[0]
        path = (sub,)
        if sub == "config":
            inner = self.binary.section(self.binary.sub_help(path), "Commands") - {"help"}
            if C.check(len(rest) > 1 and rest[1] in inner, where, f"`config` needs a subcommand ({', '.join(sorted(inner))})"):
                path = (sub, rest[1])
        known = self.binary.options(self.binary.sub_help(path)) | self.binary.global_options
        for arg in head + rest:
            if arg.startswith("--"):
                C.check(arg.split("=")[0] in known, where, f"option {arg} is not an option of `alertsvc {' '.join(path)}`")
        once = sub == "produce" and ("--once" in rest or "--dry-run" in rest)
        jobs = [rest[i + 1] for i, a in enumerate(rest[:-1]) if a == "--job"]
        jobs += [a.split("=", 1)[1] for a in rest if a.startswith("--job=")]

        # Environment.
        literal, for_check, names = self.container_env(container, where)
        self.check_env_names(names, literal, where)
        config_dir = literal.get("ALERTSVC_CONFIG_DIR", self.image.config_dir)
        for i, a in enumerate(head):
            if a == "--config-dir" and i + 1 < len(head):
                config_dir = head[i + 1]
            elif a.startswith("--config-dir="):
                config_dir = a.split("=", 1)[1]

        # Config: the files the pod sees, and what they resolve to.
        files = self.materialize(pod, container, config_dir, where)
        effective = copy.deepcopy(self.default_toml)
        env_name = literal.get("ALERTSVC_ENV")
        if files is not None and env_name:
            if C.check(f"{env_name}.toml" in files, where, f"ALERTSVC_ENV={env_name} but {config_dir}/{env_name}.toml is not mounted"):
                try:
                    effective = deep_merge(effective, tomllib.loads(files[f"{env_name}.toml"]))
                except tomllib.TOMLDecodeError as e:
                    C.fail(where, f"{env_name}.toml: {e}")
        for name, value in literal.items():
            if name.startswith("ALERTSVC__"):
                node = effective
                keys = env_key_path(name)
                for k in keys[:-1]:
                    node = node.setdefault(k, {}) if isinstance(node.get(k, {}), dict) else {}
                node[keys[-1]] = value
        if files is not None:
            self.run_config_check(files, for_check, where)

        # Security context (container settings override the pod's).
        pod_sc = spec.get("securityContext") or {}
        sc = container.get("securityContext") or {}
        effective_sc = lambda key: sc.get(key, pod_sc.get(key))  # noqa: E731
        C.check(effective_sc("runAsNonRoot") is True, where, "runAsNonRoot is not true")
        C.check(effective_sc("runAsUser") == self.image.uid, where, f"runAsUser {effective_sc('runAsUser')} is not the image's USER {self.image.uid}")
        C.check(sc.get("readOnlyRootFilesystem") is True, where, "readOnlyRootFilesystem is not true")
        C.check(sc.get("allowPrivilegeEscalation") is False, where, "allowPrivilegeEscalation is not false")
        C.check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), where, "capabilities.drop lacks ALL")
        C.check((effective_sc("seccompProfile") or {}).get("type") == "RuntimeDefault", where, "seccompProfile is not RuntimeDefault")
        # Writable paths under a read-only root: the working directory
        # (relative SQLite files of the default config) and /tmp.
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        writable = {
            m["mountPath"].rstrip("/") for m in container.get("volumeMounts") or []
            if not m.get("readOnly") and any(k in volumes.get(m["name"], {}) for k in ("emptyDir", "persistentVolumeClaim", "ephemeral"))
        }
        workdir = container.get("workingDir", self.image.workdir).rstrip("/")
        C.check(workdir in writable, where, f"working directory {workdir} is not a writable volume (SQLite files of the default config are relative to it)")
        C.check("/tmp" in writable, where, "/tmp is not a writable volume")
        for mount in container.get("volumeMounts") or []:
            vol = volumes.get(mount["name"], {})
            if "secret" in vol:
                self.secret_refs.add((vol["secret"]["secretName"], ""))
                C.check(mount.get("readOnly") is True, where, f"secret volume `{mount['name']}` is not mounted readOnly")

        # Resources.
        res = container.get("resources") or {}
        for kind, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
            for key in keys:
                C.check(key in (res.get(kind) or {}), where, f"resources.{kind}.{key} is not set")

        # HTTP: ports, probes, scrape annotations.
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
        if sub in LONG_RUNNING or (sub == "produce" and not once):
            stage = sub
            addr = (effective.get(stage) or {}).get("http_addr")
            if not C.check(addr is not None, where, f"`{stage}.http_addr` is not in the effective config"):
                return
            want = port_of(addr)
            C.check(want in ports.values(), where, f"no containerPort {want} ({stage}.http_addr = {addr})")
            for probe_name, probe_path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
                probe = container.get(probe_name)
                if probe is None:
                    C.check(probe_name == "startupProbe", where, f"{probe_name} is missing")
                    continue
                http = probe.get("httpGet")
                if not C.check(http is not None, where, f"{probe_name} is not an httpGet probe"):
                    continue
                raw = http.get("port")
                port = ports.get(raw) if isinstance(raw, str) and not raw.isdigit() else int(raw)
                shown = f"{raw!r} (= {port})" if isinstance(raw, str) and not raw.isdigit() else str(raw)
                C.check(port == want, where, f"{probe_name} port {shown} is not {stage}.http_addr's {want}")
                C.check(http.get("path") == probe_path, where, f"{probe_name} path {http.get('path')} is not {probe_path}")
            C.check(annotations.get("prometheus.io/scrape") == "true", where, "pod annotation prometheus.io/scrape is not \"true\"")
            C.check(annotations.get("prometheus.io/port") == str(want), where, f"pod annotation prometheus.io/port {annotations.get('prometheus.io/port')} is not {want}")
            C.check(annotations.get("prometheus.io/path", "/metrics") == "/metrics", where, "pod annotation prometheus.io/path is not /metrics")
            C.check(obj["kind"] != "CronJob", where, f"`{sub}` is long-running; a CronJob runs `produce --once`")
            if sub == "enrich":
                # transactional.id = prefix + instance id: unique per replica.
                instance = next((v for v in container.get("env") or [] if v["name"] == "ALERTSVC_INSTANCE_ID"), {})
                C.check(
                    ((instance.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "metadata.name",
                    where, "ALERTSVC_INSTANCE_ID is not the pod name (valueFrom.fieldRef.fieldPath: metadata.name); replicas need distinct transactional ids",
                )
                # ... and stable: only a StatefulSet's pod keeps its name, so
                # a restarted enrich fences its predecessor's open transaction
                # at once instead of read_committed readers waiting for
                # transaction.timeout.
                if C.check(
                    obj["kind"] == "StatefulSet", where,
                    f"enrich runs as a {obj['kind']}: its pods get new names, so a crashed instance's open transaction blocks read_committed readers until enrich.transaction_timeout; use a StatefulSet (stable transactional.id)",
                ):
                    self.check_statefulset(obj, where)
            if sub == "notify":
                ledger = self.database_url(container, literal, effective, ("notify", "ledger", "database_url"))
                replicas = obj["spec"].get("replicas", 1)
                C.check(
                    replicas <= 1 or not ledger.startswith("sqlite:"), where,
                    f"{replicas} replicas on a SQLite ledger ({ledger}): each pod would keep its own idempotency ledger; use PostgreSQL (ALERTSVC__NOTIFY__LEDGER__DATABASE_URL)",
                )
                C.check(
                    literal.get("ALERTSVC_REPLICAS") == str(replicas), where,
                    f"env ALERTSVC_REPLICAS is {literal.get('ALERTSVC_REPLICAS')!r}, but spec.replicas is {replicas}: set it to \"{replicas}\" (config check warns from it about a SQLite ledger shared by replicas)",
                )
                if ledger.startswith("sqlite:"):
                    # A relative SQLite path is relative to the working directory.
                    path = ledger.split("://", 1)[-1].split("?", 1)[0]
                    directory = str((Path(workdir) / path).parent)
                    claim = next(
                        (
                            volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
                            for m in container.get("volumeMounts") or []
                            if "persistentVolumeClaim" in volumes.get(m["name"], {})
                            and (directory + "/").startswith(m["mountPath"].rstrip("/") + "/")
                        ),
                        None,
                    )
                    if C.check(
                        claim is not None, where,
                        f"the SQLite ledger ({ledger}) is in {directory}, which is no PersistentVolumeClaim: a new pod would forget what was posted and post redelivered alerts again",
                    ):
                        C.check(claim in self.claims, where, f"PersistentVolumeClaim {claim} is not in the rendering")
                    C.check(
                        obj["kind"] != "Deployment" or (obj["spec"].get("strategy") or {}).get("type") == "Recreate", where,
                        "a SQLite ledger on a volume needs strategy Recreate: a rolling update would run two pods on one ledger file (or wait for the ReadWriteOnce volume forever)",
                    )
                grace = spec.get("terminationGracePeriodSeconds", 30)
                shutdown = seconds(effective.get("notify", {}).get("shutdown_grace", "0s"))
                C.check(grace > shutdown, where, f"terminationGracePeriodSeconds {grace} does not exceed notify.shutdown_grace ({shutdown:g}s): in-flight posts would be killed")
            self.http_ports[(obj["kind"], obj["metadata"]["name"])] = (sub, want, ports)
        else:
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                C.check(probe_name not in container, where, f"`{' '.join(rest)}` serves no HTTP: {probe_name} would always fail")
            C.check(annotations.get("prometheus.io/scrape") != "true", where, f"`{' '.join(rest)}` serves no /metrics: do not annotate it for scraping")
        if sub == "produce":
            produce_jobs = (effective.get("produce") or {}).get("jobs") or {}
            for job in jobs:
                C.check(job in produce_jobs, where, f"--job {job} is not a job of the effective config (produce.jobs: {', '.join(sorted(produce_jobs))})")
            if obj["kind"] == "CronJob":
                C.check(once, where, "a CronJob must run `produce --once`")
                state = self.database_url(container, literal, effective, ("produce", "state", "database_url"))
                persistent = {
                    m["mountPath"].rstrip("/") for m in container.get("volumeMounts") or []
                    if "persistentVolumeClaim" in volumes.get(m["name"], {})
                }
                C.check(
                    not state.startswith("sqlite:") or workdir in persistent, where,
                    f"produce state on SQLite ({state}) in the pod's {workdir} is lost after each run (checkpoints, emitted ids): take ALERTSVC__PRODUCE__STATE__DATABASE_URL from a Secret, or mount a PersistentVolumeClaim there",
                )
                self.enabled_jobs |= {n for n, j in produce_jobs.items() if j.get("enabled", True) is not False}
                self.covered_jobs |= set(jobs) if jobs else set(produce_jobs)
                if len(jobs) == 1 and jobs[0] in produce_jobs and "schedule" in produce_jobs[jobs[0]]:
                    configured = produce_jobs[jobs[0]]["schedule"]
                    C.check(
                        obj["spec"].get("schedule") == configured, where,
                        f"schedule `{obj['spec'].get('schedule')}` differs from produce.jobs.{jobs[0]}.schedule `{configured}`",
                    )

    def check_statefulset(self, obj: dict, where: str) -> None:
        spec = obj["spec"]
        C.check(
            spec.get("podManagementPolicy") == "Parallel", where,
            "podManagementPolicy is not Parallel: replicas would start one after another, each waiting for the previous one's table bootstrap",
        )
        service = next(
            (d for d in self.docs if d.get("kind") == "Service" and d["metadata"]["name"] == spec.get("serviceName")),
            None,
        )
        if C.check(service is not None, where, f"serviceName {spec.get('serviceName')!r} is not a Service in the rendering"):
            C.check(service["spec"].get("clusterIP") == "None", where, f"Service {service['metadata']['name']} (serviceName) is not headless (clusterIP: None)")
            C.check(
                selector_matches(service["spec"].get("selector"), pod_template(obj)["metadata"].get("labels") or {}), where,
                f"Service {service['metadata']['name']} (serviceName) does not select this StatefulSet's pods",
            )

    @staticmethod
    def database_url(container: dict, literal: dict[str, str], effective: dict, key: tuple[str, ...]) -> str:
        """The URL a pod would use, or "secret" when a Secret provides it."""
        name = "ALERTSVC__" + "__".join(k.upper() for k in key)
        if name in literal:
            return literal[name]
        if any(v["name"] == name and "secretKeyRef" in (v.get("valueFrom") or {}) for v in container.get("env") or []):
            return "secret"
        node = effective
        for k in key:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        return str(node) if node else ""

    def run_config_check(self, files: dict[str, str], env: dict[str, str], where: str) -> None:
        key = json.dumps([files, sorted(env.items())], sort_keys=True)
        if key in self.config_runs:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for rel, content in files.items():
                target = Path(tmp) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            code, stderr = self.binary.config_check(Path(tmp), env)
        self.config_runs[key] = (where, code, stderr)
        CONFIG_RUNS.append((where, code))
        shown = " ".join(f"{k}={'***' if 'placeholder' in v else v}" for k, v in sorted(env.items()))
        C.check(code == 0, where, f"`alertsvc config check` on the mounted config with the pod's environment ({shown}) failed: {stderr}")
        for line in stderr.splitlines():
            C.check(not line.startswith("warning:"), where, f"`alertsvc config check` with the pod's environment warns: {line}")

    # -- the whole rendering ----------------------------------------------

    def check(self) -> None:
        self.http_ports: dict[tuple[str, str], tuple[str, int, dict]] = {}
        self.enabled_jobs: set[str] = set()
        self.covered_jobs: set[str] = set()
        name = self.name
        kinds = [d.get("kind") for d in self.docs]
        C.check(bool(self.docs), name, "the rendering is empty")
        for doc in self.docs:
            if doc.get("kind") == "Secret":
                C.check(not (doc.get("data") or doc.get("stringData")), self.where(doc), "secret values must not be committed: reference Secrets created out of band")
        C.check(any("default.toml" in data for data in self.configmaps.values()), name, "no ConfigMap holds default.toml")
        for cm_name, data in self.configmaps.items():
            size = sum(len(k) + len(str(v).encode()) for k, v in data.items())
            C.check(size < 1024 * 1024, f"{name}: ConfigMap/{cm_name}", f"holds {size} bytes; Kubernetes refuses ConfigMaps over 1 MiB")
        runs: dict[str, list[dict]] = {}
        for obj in self.workloads:
            pod = pod_template(obj)
            where = self.where(obj)
            if obj["kind"] != "CronJob" and obj["kind"] != "Job":
                C.check(selector_matches(obj["spec"].get("selector"), (pod.get("metadata") or {}).get("labels") or {}), where, "spec.selector does not match the pod template's labels")
            containers = pod["spec"].get("containers") or []
            for container in containers:
                C.check(bool(container.get("image")), where, f"container {container['name']} has no image")
                self.check_container(obj, pod, container)
                args = [str(a) for a in container.get("args") or []]
                _, rest = split_args(args)
                if rest:
                    runs.setdefault(rest[0], []).append(obj)
                    if rest[0] == "produce" and "--once" in rest:
                        runs.setdefault("produce --once", []).append(obj)
            if obj["kind"] == "CronJob":
                spec = obj["spec"]
                C.check(spec.get("concurrencyPolicy") == "Forbid", where, "concurrencyPolicy is not Forbid (one produce run per job at a time)")
                C.check("startingDeadlineSeconds" in spec, where, "startingDeadlineSeconds is not set")
                job = spec.get("jobTemplate", {}).get("spec", {})
                C.check("backoffLimit" in job, where, "jobTemplate.spec.backoffLimit is not set")
                C.check(pod["spec"].get("restartPolicy") in ("Never", "OnFailure"), where, "restartPolicy must be Never or OnFailure")
        for job in sorted(self.enabled_jobs - self.covered_jobs):
            C.fail(name, f"produce job `{job}` is enabled in the config but no CronJob runs it (`produce --once --job {job}`); add one or set produce.jobs.{job}.enabled = false")
        for sub, kind in (("enrich", "StatefulSet"), ("notify", "Deployment"), ("produce --once", "CronJob")):
            C.check(any(o["kind"] == kind for o in runs.get(sub, [])), name, f"no {kind} runs `alertsvc {sub}`")

        # Services select one HTTP workload and target its http_addr port.
        services = {d["metadata"]["name"]: d for d in self.docs if d.get("kind") == "Service"}
        for svc in services.values():
            where = self.where(svc)
            selected = [
                (o, self.http_ports.get((o["kind"], o["metadata"]["name"])))
                for o in self.workloads
                if selector_matches(svc["spec"].get("selector"), (pod_template(o).get("metadata") or {}).get("labels") or {})
            ]
            if not C.check(len(selected) == 1 and selected[0][1] is not None, where, f"selects {len(selected)} HTTP workloads; want exactly one"):
                continue
            sub, want, ports = selected[0][1]
            for port in svc["spec"].get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                resolved = ports.get(target) if isinstance(target, str) and not target.isdigit() else int(target)
                shown = f"{target!r} (= {resolved})" if isinstance(target, str) and not target.isdigit() else str(target)
                C.check(resolved == want, where, f"port {port.get('name', port['port'])} targets {shown}, not {sub}.http_addr's {want}")
        C.check(
            any(self.http_ports.get(("Deployment", o["metadata"]["name"]), ("",))[0] == "notify"
                and any(selector_matches(s["spec"].get("selector"), pod_template(o)["metadata"].get("labels") or {}) for s in services.values())
                for o in self.workloads),
            name, "no Service selects the notify Deployment (Slack's interactivity URL needs one)",
        )
        for ing in (d for d in self.docs if d.get("kind") == "Ingress"):
            for rule in ing["spec"].get("rules") or []:
                for p in (rule.get("http") or {}).get("paths") or []:
                    backend = p["backend"].get("service") or {}
                    svc = services.get(backend.get("name"))
                    if not C.check(svc is not None, self.where(ing), f"backend Service {backend.get('name')} is not in the rendering"):
                        continue
                    port = backend.get("port") or {}
                    C.check(
                        any(sp.get("name") == port.get("name") or sp["port"] == port.get("number") for sp in svc["spec"]["ports"]),
                        self.where(ing), f"backend port {port} is not a port of Service {svc['metadata']['name']}",
                    )
                    if p.get("path", "").startswith("/slack"):
                        C.check(p["path"] == "/slack/interactions", self.where(ing), f"path {p['path']} is not notify's /slack/interactions")

        # One PodDisruptionBudget per Deployment or StatefulSet; none
        # selecting nothing.
        pdbs = [d for d in self.docs if d.get("kind") == "PodDisruptionBudget"]
        for obj in (o for o in self.workloads if o["kind"] in ("Deployment", "StatefulSet")):
            labels = pod_template(obj)["metadata"].get("labels") or {}
            covering = [p for p in pdbs if selector_matches(p["spec"].get("selector"), labels)]
            C.check(len(covering) == 1, self.where(obj), f"covered by {len(covering)} PodDisruptionBudgets; want exactly one")
        for pdb in pdbs:
            C.check(
                any(selector_matches(pdb["spec"].get("selector"), pod_template(o)["metadata"].get("labels") or {}) for o in self.workloads),
                self.where(pdb), "selects no workload",
            )


# ------------------------------------------------------ alerting rules

# Series the rules may use besides alertsvc's own: Prometheus's `up` and
# kube-state-metrics (readiness, CronJobs and Jobs). A name outside these
# and src/metrics.rs is a typo or a metric that does not exist.
EXTERNAL_METRICS = {
    "up",
    "kube_pod_status_ready",
    "kube_statefulset_replicas",
    "kube_statefulset_status_replicas_ready",
    "kube_deployment_spec_replicas",
    "kube_deployment_status_replicas_available",
    "kube_cronjob_status_last_successful_time",
    "kube_cronjob_status_last_schedule_time",
    "kube_cronjob_next_schedule_time",
    "kube_job_failed",
    "kube_job_status_start_time",
    "kube_job_status_failed",
}
# Prometheus durations (the CRD's pattern for `for`, `interval`, …).
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
GROUP_FIELDS = {"name", "interval", "labels", "limit", "partial_response_strategy", "query_offset", "rules"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
SEVERITIES = {"warning", "critical"}
PROMQL_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_KEYWORDS = PROMQL_GROUPING | {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def alertsvc_metrics() -> tuple[set[str], set[str]]:
    """(every metric name in src/metrics.rs, the histograms among them)."""
    metrics_rs = (ROOT / "src" / "metrics.rs").read_text()
    defined = set(re.findall(r'"(alertsvc_[a-z0-9_]+)"', metrics_rs))
    # Histograms: `HistogramOpts::new("…")`, or a `histogram("…", …)` helper.
    histograms = set(re.findall(r'(?:HistogramOpts::new|histogram)\(\s*"(alertsvc_[a-z0-9_]+)"', metrics_rs))
    return defined, histograms


def promql_selectors(expr: str) -> tuple[set[str], list[tuple[str, str, str]]]:
    """(metric names, label matchers (label, op, value)) of a PromQL
    expression: identifiers that are not functions, keywords or grouping
    labels, and the matchers inside `{…}`."""
    matchers = [
        (label, op, value)
        for block in re.findall(r"\{([^}]*)\}", expr)
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', block)
    ]
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    tokens = re.findall(r"\d[\w.]*|[A-Za-z_:][\w:]*|[()]", text)
    names, i = set(), 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token.lower() in PROMQL_GROUPING and following == "(":
            i = tokens.index(")", i)  # skip the label list
        elif (
            token[0].isdigit() or token in "()" or token.lower() in PROMQL_KEYWORDS
            or following == "(" or following.lower() in ("by", "without")
        ):
            pass  # a number, a keyword, a function or an aggregation
        else:
            names.add(token)
        i += 1
    return names, matchers


def readme_runbook_exists(reference: str) -> str | None:
    """None when "FILE › Heading › Bullet" names a section of FILE and a
    bullet starting `**Bullet.**` in it; else what is missing."""
    parts = [p.strip() for p in reference.split("›")]
    if len(parts) != 3:
        return f"runbook {reference!r} is not `FILE › Heading › Bullet`"
    path = ROOT / parts[0]
    if not path.is_file():
        return f"runbook file {parts[0]} does not exist"
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(parts[1])}", line)), None)
    if start is None:
        return f"{parts[0]} has no section `{parts[1]}`"
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    section = []
    for line in lines[start + 1:]:
        heading = re.match(r"(#+) ", line)
        if heading and len(heading.group(1)) <= level:
            break
        section.append(line)
    if not any(re.match(rf"\s*[-*] \*\*{re.escape(parts[2])}\.\*\*", line) for line in section):
        return f"{parts[0]} section `{parts[1]}` has no bullet **{parts[2]}.**"
    return None


def object_names_for(label: str, docs: list[dict]) -> list[str]:
    """Example values kube-state-metrics or a scrape would give `label`
    for the objects of a rendering."""
    names = []
    for d in docs:
        kind, name = d.get("kind"), d.get("metadata", {}).get("name", "")
        if label == "statefulset" and kind == "StatefulSet":
            names.append(name)
        elif label == "deployment" and kind == "Deployment":
            names.append(name)
        elif label == "cronjob" and kind == "CronJob":
            names.append(name)
        elif label == "job_name" and kind == "CronJob":
            names.append(f"{name}-29384756")  # a Job's name: CronJob + "-" + minute
        elif label == "pod" and kind == "StatefulSet":
            names.append(f"{name}-0")
        elif label == "pod" and kind == "Deployment":
            names.append(f"{name}-5d9c7b8f4-x2x9q")
    return names


def check_prometheus_rules(name: str, docs: list[dict]) -> None:
    defined, histograms = alertsvc_metrics()
    rules_objects = [d for d in docs if d.get("kind") == "PrometheusRule"]
    C.check(len(rules_objects) == 1, name, f"{len(rules_objects)} PrometheusRules; want exactly one (deploy/base/alerts.yaml)")
    alerts: dict[str, str] = {}
    for obj in rules_objects:
        where = f"{name}: PrometheusRule/{obj.get('metadata', {}).get('name')}"
        C.check(obj.get("apiVersion") == "monitoring.coreos.com/v1", where, f"apiVersion {obj.get('apiVersion')} is not monitoring.coreos.com/v1")
        C.check(bool(obj.get("metadata", {}).get("name")), where, "metadata.name is missing")
        spec = obj.get("spec")
        if not C.check(isinstance(spec, dict), where, "spec is missing or not an object"):
            continue
        C.check(set(spec) <= {"groups"}, where, f"unknown spec fields {sorted(set(spec) - {'groups'})}")
        groups = spec.get("groups")
        if not C.check(isinstance(groups, list) and bool(groups), where, "spec.groups is missing or empty"):
            continue
        group_names = [g.get("name") for g in groups if isinstance(g, dict)]
        C.check(len(group_names) == len(set(group_names)), where, f"group names repeat: {group_names}")
        for gi, group in enumerate(groups):
            gwhere = f"{where} group {group.get('name', gi) if isinstance(group, dict) else gi}"
            if not C.check(isinstance(group, dict), gwhere, "is not an object"):
                continue
            C.check(set(group) <= GROUP_FIELDS, gwhere, f"unknown fields {sorted(set(group) - GROUP_FIELDS)}")
            C.check(isinstance(group.get("name"), str) and bool(group.get("name")), gwhere, "name is missing")
            for key in ("interval", "query_offset"):
                if key in group:
                    C.check(isinstance(group[key], str) and bool(DURATION.match(group[key])), gwhere, f"{key} {group[key]!r} is not a duration")
            rules = group.get("rules")
            if not C.check(isinstance(rules, list) and bool(rules), gwhere, "rules is missing or empty"):
                continue
            for ri, rule in enumerate(rules):
                rwhere = f"{gwhere} rule {ri}"
                if not C.check(isinstance(rule, dict), rwhere, "is not an object"):
                    continue
                if rule.get("alert"):
                    rwhere = f"{gwhere} alert {rule['alert']}"
                C.check(set(rule) <= RULE_FIELDS, rwhere, f"unknown fields {sorted(set(rule) - RULE_FIELDS)}")
                C.check(("alert" in rule) != ("record" in rule), rwhere, "needs exactly one of `alert` and `record`")
                C.check(isinstance(rule.get("expr"), (str, int)) and str(rule.get("expr")).strip() != "", rwhere, "expr is missing")
                for key in ("for", "keep_firing_for"):
                    if key in rule:
                        C.check(isinstance(rule[key], str) and bool(DURATION.match(rule[key])), rwhere, f"{key} {rule[key]!r} is not a duration")
                for key in ("labels", "annotations"):
                    value = rule.get(key, {})
                    C.check(
                        isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()),
                        rwhere, f"{key} must map strings to strings",
                    )
                if "record" in rule:
                    C.check("annotations" not in rule and "for" not in rule, rwhere, "a recording rule takes no annotations or `for`")
                    continue
                alert = str(rule.get("alert"))
                C.check(alert not in alerts, rwhere, f"alert {alert} is defined twice")
                alerts[alert] = rwhere
                # What an operator needs from every alert.
                C.check("for" in rule, rwhere, "has no `for:` (one bad scrape would page)")
                labels = rule.get("labels") or {}
                annotations = rule.get("annotations") or {}
                C.check(labels.get("severity") in SEVERITIES, rwhere, f"severity {labels.get('severity')!r} is not one of {sorted(SEVERITIES)}")
                for key in ("summary", "description", "runbook"):
                    C.check(bool(str(annotations.get(key, "")).strip()), rwhere, f"annotation {key} is missing")
                if annotations.get("runbook"):
                    missing = readme_runbook_exists(str(annotations["runbook"]))
                    C.check(missing is None, rwhere, str(missing))
                names, matchers = promql_selectors(str(rule.get("expr", "")))
                C.check(bool(names), rwhere, "expr selects no metric")
                for metric in sorted(names):
                    base = re.sub(r"_(bucket|sum|count)$", "", metric)
                    if metric.startswith("alertsvc_"):
                        real = metric in defined or (base in histograms and base != metric)
                        C.check(real, rwhere, f"expr uses {metric}, which src/metrics.rs does not define")
                    else:
                        C.check(metric in EXTERNAL_METRICS, rwhere, f"expr uses {metric}, neither an alertsvc metric nor a known kube-state-metrics/Prometheus one (EXTERNAL_METRICS in scripts/check_deploy.py)")
                # Workload names in matchers must name this rendering's objects.
                for label, op, value in sorted(set(matchers)):
                    examples = object_names_for(label, docs)
                    if op not in ("=", "=~") or label not in ("statefulset", "deployment", "cronjob", "job_name", "pod"):
                        continue
                    hit = [n for n in examples if (n == value if op == "=" else re.fullmatch(value, n))]
                    C.check(bool(hit), rwhere, f"matcher {label}{op}\"{value}\" matches no object of the rendering ({', '.join(examples) or 'none of that kind'})")
    for required in ("AlertsvcConsumerLagGrowing", "AlertsvcSlackUnreachable", "AlertsvcProduceStale", "AlertsvcPodNotReady", "AlertsvcEnrichDeadLetters", "AlertsvcNotifyDeadLetters"):
        C.check(required in alerts, name, f"no alert {required} in the PrometheusRule")


def check_readme_secrets(refs: set[tuple[str, str]]) -> None:
    readme = ROOT / "deploy" / "README.md"
    if not C.check(readme.exists(), "deploy/README.md", "missing"):
        return
    text = readme.read_text()
    for secret, key in sorted(refs):
        C.check(secret in text, "deploy/README.md", f"does not say how to create Secret `{secret}`")
        if key:
            C.check(key in text, "deploy/README.md", f"does not document key `{key}` of Secret `{secret}`")


def check_dashboards() -> None:
    defined, histograms = alertsvc_metrics()
    paths = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    C.check(bool(paths), "deploy/grafana", "no dashboard JSON")
    used: set[str] = set()
    for path in paths:
        where = str(path.relative_to(ROOT))
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            C.fail(where, f"invalid JSON: {e}")
            continue
        panels, stack = [], list(dashboard.get("panels") or [])
        while stack:
            panel = stack.pop()
            panels.append(panel)
            stack.extend(panel.get("panels") or [])
        ids = [p.get("id") for p in panels]
        C.check(len(ids) == len(set(ids)) and None not in ids, where, "panel ids are missing or repeated")
        for panel in panels:
            for target in panel.get("targets") or []:
                expr = target.get("expr", "")
                for name in re.findall(r"\b(alertsvc_[a-z0-9_]+)", expr):
                    base = re.sub(r"_(bucket|sum|count)$", "", name)
                    real = name in defined or (base in histograms and base != name)
                    C.check(real, where, f"panel `{panel.get('title')}` queries {name}, which src/metrics.rs does not define")
                    used.add(base if base in histograms else name)
    missing = sorted(defined - used)
    if missing:
        print(f"note: metrics not on any dashboard: {', '.join(missing)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the alertsvc binary (for --help and config check)")
    parser.add_argument("renderings", nargs="+", metavar="NAME=FILE")
    args = parser.parse_args()

    default_toml = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    binary = Binary(args.bin)
    image = check_dockerfile(default_toml)
    refs: set[tuple[str, str]] = set()
    for spec in args.renderings:
        name, _, file = spec.partition("=")
        rendering = Rendering(name, Path(file), binary, image, default_toml)
        rendering.check()
        check_prometheus_rules(name, rendering.docs)
        refs |= rendering.secret_refs
    check_readme_secrets(refs)
    check_dashboards()

    print(f"note: `alertsvc config check` passed on {sum(1 for r in CONFIG_RUNS if r[1] == 0)} of {len(CONFIG_RUNS)} distinct pod configurations")
    for failure in C.failures:
        print(f"FAIL {failure}")
    print(f"check_deploy: {C.passed} passed, {len(C.failures)} failed")
    return 1 if C.failures else 0


if __name__ == "__main__":
    sys.exit(main())
