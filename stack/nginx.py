"""The stack's nginx: render its config from the template, check it with ``nginx -t``, build its argv."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import jinja2

from stack.settings import StackSettings, origin_regex
from stack.tls import ensure_tls_pair, tls_paths

# Debian and most distributions put nginx in /usr/sbin, which is not on an ordinary user's PATH.
_NGINX_FALLBACKS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxError(RuntimeError):
    """nginx is missing or rejected the rendered configuration."""


def find_nginx() -> str:
    """The nginx binary's path; NginxError with the install command when there is none."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in _NGINX_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise NginxError("nginx is not installed (run `make setup`, or: sudo apt-get install -y nginx)")


def nginx_dir(settings: StackSettings) -> Path:
    """Where the stack keeps nginx's config, pid file and temp directories."""
    return settings.run_dir / "nginx"


def logs_dir(settings: StackSettings) -> Path:
    """Where every process of the stack writes its logs."""
    return settings.run_dir / "logs"


def _ngx_quote(value: object) -> str:
    """A value as an nginx double-quoted string, so paths with spaces or ';' stay one argument."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


@functools.cache
def _templates() -> jinja2.Environment:
    # StrictUndefined: a missing variable is a bug in render_nginx_conf, not an empty directive.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["ngx"] = _ngx_quote
    return env


def listen_address(settings: StackSettings) -> str:
    """OLLAMA_HOST as nginx's ``listen`` takes it: ``host:port``, or ``[v6]:port``."""
    host = settings.listen_host
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{settings.listen_port}"


def render_nginx_conf(settings: StackSettings) -> str:
    """The complete nginx.conf for the stack's foreground nginx."""
    ndir = nginx_dir(settings)
    logs = logs_dir(settings)
    tls_cert, tls_key = tls_paths(settings)
    return (
        _templates()
        .get_template("nginx.conf.j2")
        .render(
            run_as_root=os.geteuid() == 0,
            worker_processes="auto",
            pid_path=ndir / "nginx.pid",
            error_log=logs / "nginx-error.log",
            access_log=logs / "nginx-access.log",
            log_level="info" if settings.debug else "notice",
            temp_dir=ndir / "temp",
            api_port=settings.api_port,
            listen=listen_address(settings),
            origin_regexes=sorted({origin_regex(p) for p in settings.origin_patterns}),
            check_host=settings.loopback_bind,
            metrics_public=settings.metrics_public,
            metrics_listen=f"127.0.0.1:{settings.metrics_port}",
            max_body_size=settings.max_body_size,
            tls=settings.tls,
            tls_cert=tls_cert,
            tls_key=tls_key,
            loopback_listen=f"127.0.0.1:{settings.listen_port}",
        )
    )


def write_nginx_conf(settings: StackSettings) -> Path:
    """Render nginx.conf into the run dir, creating every directory nginx will write to (and, serving
    HTTPS without a configured certificate, the self-signed one)."""
    ndir = nginx_dir(settings)
    for name in _TEMP_DIRS:
        (ndir / "temp" / name).mkdir(parents=True, exist_ok=True)
    logs_dir(settings).mkdir(parents=True, exist_ok=True)
    if settings.tls:
        ensure_tls_pair(settings)
    path = ndir / "nginx.conf"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_nginx_conf(settings))
    os.replace(tmp, path)  # a running nginx never sees a half-written file on reload
    return path


@functools.cache
def _supports_error_log_flag(binary: str) -> bool:
    """Whether this nginx has ``-e`` (1.19.5+), which keeps it off the compiled-in error log path."""
    proc = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", proc.stderr + proc.stdout)
    return match is not None and tuple(int(g) for g in match.groups()) >= (1, 19, 5)


def nginx_argv(conf: Path, prefix: Path | None = None, *, test: bool = False) -> list[str]:
    """The command line that runs (or with ``test``, checks) nginx with ``conf``."""
    binary = find_nginx()
    conf = Path(conf).absolute()
    argv = [binary, "-c", str(conf), "-p", str(Path(prefix or conf.parent).absolute())]
    if _supports_error_log_flag(binary):
        # Before it reads the config nginx opens its compiled-in log (/var/log/nginx/error.log), which
        # an ordinary user cannot write; start-up messages go to stderr, i.e. the process log, instead.
        argv += ["-e", "stderr"]
    if test:
        argv.append("-t")
    return argv


def check_nginx_conf(path: Path, prefix: Path | None = None) -> None:
    """Run ``nginx -t`` on ``path``; NginxError carrying nginx's own message if it fails."""
    proc = subprocess.run(
        nginx_argv(path, prefix, test=True),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if proc.returncode != 0:
        message = (proc.stderr + proc.stdout).strip() or f"exit status {proc.returncode}"
        raise NginxError(f"nginx rejected {path}:\n{message}")
